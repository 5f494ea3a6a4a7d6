"""The static embedder against MiniLM, and progressive publishing, in one run; every figure printed as a ratio.

    .venv/bin/python scripts/bench.py static [--min-chunks 4000] [--source DIR] [--minilm-sample 400] [--wait-full]

Copies Python files from `--source` (default: the installed dagster package) into a scratch git repository until
they chunk into at least `--min-chunks` chunks (as `bench.py build` does), then:
1. throughput: the same chunk texts ("<uri>\\n<text>", what a build embeds) through the static model and MiniLM int8
   in this process, tokenization included; MiniLM on a seeded sample (`--minilm-sample`), static on all of them
   and on the same sample. Goal: static >= 100x MiniLM chunks/s. From these, the embedding cost of a billion
   chunks on this machine for each.
2. time to searchable: `indexctl build P --repo R --publish --progressive` starts; the clock stops when
   `indexctl search` (a separate process, as a user runs it) answers from `P-fast`. Goal: <= 10 s for ~4,000
   chunks on 2 cores. The full version is then left to finish (`--wait-full`, timed) or its build is stopped.
3. memory: `indexctl serve` holding the fast version after 20 searches: resident and peak (goal <= 150 MiB).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_build import load_line, make_corpus

from kg_assets.lib.build import chunk_for
from kg_assets.lib.embedding import embedding_text, load_embedder

PROJECT = Path(__file__).resolve().parent.parent
INDEXCTL = str(PROJECT / ".venv" / "bin" / "indexctl")
MIB = 2**20


def chunk_texts(repo: Path) -> list[str]:
    """What a build embeds for each chunk of `repo` (the build's own chunking, `build.chunk_for`)."""
    return [embedding_text(c.uri, c.text) for c in chunk_for(repo, load_embedder("static")).chunks]


def throughput(texts: list[str], sample: int) -> dict[str, float]:
    """Chunks per second of each embedder on the same texts, in this process, models loaded beforehand."""
    static, minilm = load_embedder("static"), load_embedder("minilm")
    static.embed(texts[:8])
    minilm.embed(texts[:8])
    picked = [texts[i] for i in np.random.default_rng(0).choice(len(texts), min(sample, len(texts)), replace=False)]
    rates = {}
    runs = (("static_all", static, texts), ("static", static, picked), ("minilm", minilm, picked))
    for name, embedder, batch in runs:
        t0 = time.perf_counter()
        embedder.embed(batch)
        rates[name] = len(batch) / (time.perf_counter() - t0)
    return rates


def start_progressive(root: Path, repo: Path) -> tuple[subprocess.Popen[str], float]:
    """Start `build --progressive` and return it once `indexctl search` answered from the fast version, with
    the seconds that took from the build's start."""
    env = {**{k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}, "KG_INDEXES_DIR": str(root)}
    env["KG_PROGRESS"] = "0"
    command = [INDEXCTL, "build", "p1", "--repo", str(repo), "--publish", "--progressive"]
    t0 = time.perf_counter()
    build = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    current = root / "CURRENT"
    while not (current.is_file() and current.read_text().strip() == "p1-fast"):
        if build.poll() is not None:
            sys.exit(f"progressive build failed: {build.stderr.read().strip().splitlines()[-1:]}")
        time.sleep(0.02)
    query = [INDEXCTL, "search", "register a sensor", "--json"]
    search = subprocess.run(query, env=env, capture_output=True, text=True)
    if search.returncode != 0 or json.loads(search.stdout)["version"] != "p1-fast":
        sys.exit(f"search did not answer from p1-fast: {search.stderr.strip()}")
    return build, time.perf_counter() - t0


def served_memory(root: Path) -> tuple[float, float]:
    """Resident and peak MiB of `indexctl serve` holding the current version after 20 searches."""
    import urllib.request

    env = {**{k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}, "KG_INDEXES_DIR": str(root)}
    server = subprocess.Popen(
        [INDEXCTL, "serve", "--port", "0"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        assert server.stderr is not None
        for line in server.stderr:
            if match := re.search(r"on (http://\S+)", line):
                url = match.group(1)
                break
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        for i in range(20):
            opener.open(f"{url}/search?q=materialize+an+asset+{i}&k=10", timeout=60).read()
        status = Path(f"/proc/{server.pid}/status").read_text()
        rss, peak = (int(re.search(rf"{key}:\s+(\d+)", status).group(1)) / 1024 for key in ("VmRSS", "VmHWM"))
        return rss, peak
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--min-chunks", type=int, default=4000)
    parser.add_argument("--source", type=Path, default=Path(__import__("dagster").__file__).parent)
    parser.add_argument("--minilm-sample", type=int, default=400)
    parser.add_argument("--wait-full", action="store_true", help="also time the full version's publish")
    args = parser.parse_args()
    print(load_line())
    with tempfile.TemporaryDirectory(prefix="kg-bench-static-") as scratch:
        repo, root = Path(scratch) / "repo", Path(scratch) / "indexes"
        make_corpus(args.source, repo, args.min_chunks)
        subprocess.run(["git", "init", "-q", str(repo)], check=True)
        texts = chunk_texts(repo)
        rates = throughput(texts, args.minilm_sample)
        print(f"throughput on {len(texts)} chunks ({args.minilm_sample} sampled for MiniLM), tokenization included:")
        print(f"  static  {rates['static_all']:9.0f} chunks/s (all)  {rates['static']:9.0f} chunks/s (sample)")
        print(f"  minilm  {rates['minilm']:9.1f} chunks/s (sample)")
        print(f"  ratio static / minilm: {rates['static'] / rates['minilm']:.0f}x (goal >= 100x)")
        for name, rate in (("static", rates["static_all"]), ("minilm", rates["minilm"])):
            print(f"  a billion chunks with {name}: {1e9 / rate / 3600:,.0f} machine-hours on this machine")
        t0 = time.perf_counter()
        build, searchable = start_progressive(root, repo)
        print(f"progressive build of {len(texts)} chunks: searchable from p1-fast after {searchable:.1f} s")
        print("  (goal <= 10 s)")
        rss, peak = served_memory(root)
        print(f"indexctl serve holding p1-fast: {rss:.0f} MiB resident, {peak:.0f} MiB peak (goal <= 150 MiB)")
        if args.wait_full:
            if build.wait() != 0:
                sys.exit(f"the full build failed: {build.stderr.read().strip().splitlines()[-1:]}")
            print(f"  p1 (MiniLM + SCIP) published {time.perf_counter() - t0:.0f} s after the build started")
        else:
            build.send_signal(signal.SIGINT)
            build.wait(120)
    print(load_line())


if __name__ == "__main__":
    main()
