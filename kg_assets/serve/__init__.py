"""Long-running readers of the current version: HTTP (`http_server`) and MCP over stdio (`mcp_server`).

Transport only: both call the engine's one retrieval stack through the handle `holder.VersionHolder` keeps loaded.
"""
