-- Coverage reports over the offline-eval pool (runbook section 5).
-- Run against the database `indexctl eval` wired up (default: artifacts/eval/analytics.duckdb), e.g.
--   duckdb artifacts/eval/analytics.duckdb < docs/sql/coverage_examples.sql
-- v_faiss_pool: one row per (query, channel, rank) hit of the newest eval run.
-- v_pool_coverage: those rows plus the chunk's language and its module (modules.repo_path = pool.uri).

-- 1. Module x channel: how often each module is hit and how well it scores.
SELECT
    coalesce(repo_path, uri) AS module,
    channel,
    count(*) AS hits,
    count(DISTINCT query_id) AS queries,
    round(avg(score), 4) AS mean_score,
    round(avg(rank), 2) AS mean_rank
FROM v_pool_coverage
GROUP BY ALL
ORDER BY module, channel;

-- 2. Channel x language: what each channel contributes per language.
SELECT
    channel,
    coalesce(language, 'unknown') AS language,
    count(*) AS hits,
    count(DISTINCT chunk_id) AS distinct_chunks,
    approx_count_distinct(query_id) AS approx_queries,
    round(100.0 * count(*) / sum(count(*)) OVER (PARTITION BY channel), 1) AS pct_of_channel
FROM v_pool_coverage
GROUP BY channel, language
ORDER BY channel, hits DESC;

-- 3. Module x channel: distinct symbols of the hit chunks that the queries named.
SELECT
    coalesce(repo_path, uri) AS module,
    channel,
    count(DISTINCT symbol) AS distinct_symbols,
    list(DISTINCT symbol ORDER BY symbol)[:5] AS sample_symbols
FROM (SELECT repo_path, uri, channel, unnest(symbol_hits) AS symbol FROM v_pool_coverage)
GROUP BY ALL
ORDER BY distinct_symbols DESC, module, channel;
