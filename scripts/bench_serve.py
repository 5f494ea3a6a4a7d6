"""Serving: warm latency and QPS of `indexctl serve`'s /search against the engine's search in a warm Python loop
and against one-shot `indexctl search`, and the server's memory with one version loaded and during a swap.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python scripts/bench.py serve [--root DIR] [--requests 400] [--clients 4]

The root (default `build/bench/serve/indexes`) gets `v1` built from this repository (`indexctl build v1 --repo .`)
unless it has it, and `v2`, a copy of v1's files staged as another version (for the swap). Goals (issue 13): the
HTTP server with `--clients` concurrent clients reaches at least 0.7x the in-process QPS, a query through it is at
least 20x faster than a one-shot `indexctl search`, and a loaded version costs at most index + vectors + model +
150 MiB of resident memory (measured against the same server with nothing loaded). Every timed query is warm:
each query text is searched once before timing.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

from kg_assets.lib.lexical import LEXICAL_FILE
from kg_assets.lib.lifecycle import CATALOG_FILE, FAISS_FILE, IDMAP_FILE, SCIP_FILE, TUNING_FILE, LifecycleRoot
from kg_assets.lib.retrieval import VersionHandle

PROJECT = Path(__file__).resolve().parent.parent
INDEXCTL = str(PROJECT / ".venv" / "bin" / "indexctl")
QUERIES = [
    "publish a version atomically",
    "roll back to the previous version",
    "compare and swap on CURRENT",
    "embed chunks with the onnx model",
    "reciprocal rank fusion of channels",
    "VersionHandle",
    "check_query",
    "gc removes old versions",
    "tuning profile nprobe k_factor",
    "split a python file into chunks along definitions",
    "BM25 tokens for code identifiers",
    "verify_version",
    "write a file atomically with fsync",
    "exclusive lock with a timeout",
    "LifecycleRoot.publish",
    "materialize the faiss id map join in duckdb",
    "recall at k against exact search",
    "how are chunk ids computed",
    "find the definition of a symbol in scip data",
    "dagster asset for the faiss index",
]
READY = re.compile(r"serving (.+) on http://([\d.]+):(\d+)")


def env_for(root: Path) -> dict[str, str]:
    env = {**os.environ, "KG_INDEXES_DIR": str(root), "KG_PROGRESS": "0"}
    env.pop("DAGSTER_HOME", None)
    return env


def prepare(root: LifecycleRoot) -> None:
    """v1 built from this repository and published, v2 a staged copy of it."""
    if "v1" not in root.list_versions():
        subprocess.run([INDEXCTL, "build", "v1", "--repo", str(PROJECT)], env=env_for(root.root), check=True)
    if "v2" not in root.list_versions():
        vdir = root.version_dir("v1")
        extras = {LEXICAL_FILE: vdir / LEXICAL_FILE} if (vdir / LEXICAL_FILE).exists() else {}
        root.stage(
            "v2",
            vdir / FAISS_FILE,
            vdir / CATALOG_FILE,
            vdir / SCIP_FILE,
            idmap_path=vdir / IDMAP_FILE,
            tuning_path=vdir / TUNING_FILE if (vdir / TUNING_FILE).exists() else None,
            extras=extras,
        )
    root.publish("v1")


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    return {"p50_ms": statistics.median(ms), "p99_ms": ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]}


def in_process(root: LifecycleRoot, requests: int) -> dict[str, Any]:
    """The engine's `handle.search` in a warm loop: the ceiling a server can approach."""
    with VersionHandle.open(root, "v1") as handle:
        for query in QUERIES:
            handle.search(query, 10)
        times = []
        start = time.perf_counter()
        for i in range(requests):
            t0 = time.perf_counter()
            handle.search(QUERIES[i % len(QUERIES)], 10)
            times.append(time.perf_counter() - t0)
        wall = time.perf_counter() - start
    return {"qps": requests / wall, **percentiles(times)}


class Server:
    """`indexctl serve --port 0` and its resident memory (from /proc)."""

    def __init__(self, root: Path) -> None:
        self.proc = subprocess.Popen(
            [INDEXCTL, "serve", "--port", "0"], env=env_for(root), stderr=subprocess.PIPE, text=True
        )
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if match := READY.search(line):
                self.host, self.port = match.group(2), int(match.group(3))
                break
        else:
            raise SystemExit(f"indexctl serve exited with {self.proc.wait()}")

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024

    def get(self, conn: http.client.HTTPConnection, path: str) -> dict[str, Any]:
        conn.request("GET", path)
        response = conn.getresponse()
        body = json.loads(response.read())
        assert response.status == 200, body
        return body

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def over_http(server: Server, requests: int, clients: int) -> dict[str, Any]:
    """`requests` searches from `clients` threads, each on its own keep-alive connection."""
    paths = [f"/search?q={urllib.parse.quote_plus(q)}&k=10" for q in QUERIES]
    warm = http.client.HTTPConnection(server.host, server.port)
    for path in paths:
        server.get(warm, path)
    times: list[float] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        conn = http.client.HTTPConnection(server.host, server.port)
        mine = []
        for i in range(n, requests, clients):
            t0 = time.perf_counter()
            server.get(conn, paths[i % len(paths)])
            mine.append(time.perf_counter() - t0)
        with lock:
            times.extend(mine)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    return {"qps": requests / wall, **percentiles(times)}


def one_shot(root: Path, queries: int) -> dict[str, Any]:
    times = []
    for query in QUERIES[:queries]:
        t0 = time.perf_counter()
        subprocess.run([INDEXCTL, "search", query, "--json"], env=env_for(root), check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return {"seconds_per_query": statistics.mean(times), **percentiles(times)}


def swap_memory(server: Server, root: LifecycleRoot) -> dict[str, Any]:
    """Peak resident memory while the server loads v2 beside v1 and switches, and seconds until it serves v2."""
    conn = http.client.HTTPConnection(server.host, server.port)
    before = server.rss_mib()
    peak = before
    root.publish("v2")
    start = time.perf_counter()
    while server.get(conn, "/health")["version"] != "v2":
        peak = max(peak, server.rss_mib())
        time.sleep(0.01)
    seconds = time.perf_counter() - start
    for _ in range(50):  # the old version closes when its last request ends
        peak = max(peak, server.rss_mib())
        time.sleep(0.01)
    return {"before_mib": before, "peak_mib": peak, "after_mib": server.rss_mib(), "swap_seconds": seconds}


MODEL_PROBE = """
import re, sys
from pathlib import Path
from kg_assets.lib import embedding
def rss():
    return int(re.search(r"VmRSS:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024
before = rss()
embedding.load_embedder("minilm").embed(["warm up"])
print(rss() - before)
"""


def model_mib() -> float:
    """What the embedder costs loaded and run once (ONNX Runtime, its session and arena), in a fresh process."""
    done = subprocess.run([sys.executable, "-c", MODEL_PROBE], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=PROJECT / "build" / "bench" / "serve" / "indexes")
    parser.add_argument("--requests", type=int, default=400, help="Timed searches per measurement.")
    parser.add_argument("--clients", type=int, default=4, help="Concurrent HTTP clients.")
    parser.add_argument("--one-shot", type=int, default=5, help="Queries timed through one-shot indexctl search.")
    parser.add_argument("--json", dest="json_out", type=Path, help="Also write the results as JSON here.")
    args = parser.parse_args(argv)
    root = LifecycleRoot(args.root)
    prepare(root)

    empty_root = args.root.parent / "empty"
    baseline = Server(empty_root)  # the same process with nothing loaded: what the libraries cost
    baseline_mib = baseline.rss_mib()
    baseline.stop()

    engine = in_process(root, args.requests)
    server = Server(args.root)
    try:
        loaded_mib = server.rss_mib()
        served = over_http(server, args.requests, args.clients)
        single = over_http(server, args.requests // 2, 1)  # one client: a query's latency without queueing
        swap = swap_memory(server, root)
    finally:
        server.stop()
        root.publish("v1")
    cli = one_shot(args.root, args.one_shot)

    vdir = root.version_dir("v1")
    manifest = root.read_manifest("v1")
    model = statistics.median(model_mib() for _ in range(3))  # one probe in a loaded machine can read low
    # the index (a Flat index holds the vectors search needs; others re-rank from the catalog's rows), the model
    budget_mib = (vdir / FAISS_FILE).stat().st_size / 2**20 + model + 150
    results = {
        "version": {"chunks": manifest["attrs"].get("faiss_ntotal"), "factory": manifest["attrs"].get("faiss_factory")},
        "in_process": engine,
        "http": {"clients": args.clients, **served},
        "http_one_client": single,
        "one_shot_cli": cli,
        "memory": {
            "nothing_loaded_mib": baseline_mib,
            "one_version_loaded_mib": loaded_mib,
            "one_version_cost_mib": loaded_mib - baseline_mib,
            "model_mib": model,
            "budget_mib": budget_mib,
            **swap,
        },
        "ratios": {
            "http_vs_in_process_qps": served["qps"] / engine["qps"],
            "one_shot_vs_http_p50": cli["seconds_per_query"] * 1000 / single["p50_ms"],
            "one_shot_vs_http_per_query": cli["seconds_per_query"] * served["qps"],
        },
    }
    m, r = results["memory"], results["ratios"]
    print(f"version v1: {results['version']['chunks']} chunks, {results['version']['factory']}")
    print("| path | QPS | p50 ms | p99 ms |")
    print("| --- | ---: | ---: | ---: |")
    rows = [
        ("engine `handle.search`, warm loop", engine["qps"], engine),
        (f"HTTP /search, {args.clients} clients", served["qps"], served),
        ("HTTP /search, 1 client", single["qps"], single),
        ("one-shot `indexctl search`", 1 / cli["seconds_per_query"], cli),
    ]
    for name, qps, stats in rows:
        print(f"| {name} | {qps:.2f} | {stats['p50_ms']:.1f} | {stats['p99_ms']:.1f} |")
    print(f"HTTP QPS / in-process QPS: {r['http_vs_in_process_qps']:.2f} (goal >= 0.7)")
    print(
        f"one-shot per query / HTTP: {r['one_shot_vs_http_p50']:.0f}x against one client's p50 latency, "
        f"{r['one_shot_vs_http_per_query']:.0f}x against 1/QPS with {args.clients} clients (goal >= 20x)"
    )
    print(
        f"memory: {m['nothing_loaded_mib']:.0f} MiB with nothing loaded, {m['one_version_loaded_mib']:.0f} MiB with "
        f"v1 ({m['one_version_cost_mib']:.0f} MiB for the version; budget index + model ({m['model_mib']:.0f}) + 150 = "
        f"{m['budget_mib']:.0f} MiB); swap to v2 in {m['swap_seconds']:.2f} s, peak {m['peak_mib']:.0f} MiB, "
        f"{m['after_mib']:.0f} MiB after"
    )
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
