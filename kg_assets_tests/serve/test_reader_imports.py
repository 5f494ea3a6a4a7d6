"""What a reader process loads: `indexctl` and its servers never import pyarrow, Dagster or onnxruntime at start
(a server holding a static version stays within its memory budget; README "The static embedder")."""

import subprocess
import sys


def test_indexctl_and_the_servers_import_no_heavy_module() -> None:
    heavy = ("pyarrow", "polars", "dagster", "onnxruntime", "torch")
    code = (
        "import sys, kg_assets.cli.main, kg_assets.serve.http_server, kg_assets.serve.mcp_server\n"
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""
