"""Chunking throughput per language on one core: real source files through `chunking.chunk_file`.

    .venv/bin/python scripts/bench.py chunking [--seconds 1.0] [--repeats 3] [--cpu 0] [--max-kib 1024]

Sources are the real files setup installs (the same the tree-sitter tests read): node_modules (npm packages' JS
and TS, shiki 0.14's code samples), build/lang-sources (Debian's Go, Rust, Ruby, PHP and Lua), pyarrow's C++,
git's shell library and kg_assets' own Python. Per language, every file is chunked with the default embedder's
token counter and budget (what `build` does: tree-sitter parse, definitions, per-line token counts, segments,
ids), the first `--max-kib` KiB of each language's files in path order. After a warm-up, each timed repeat loops
over them for at least `--seconds` of CPU time; the median repeat is reported as chunks per CPU-second, the
figure for one core however busy the machine is (goal >= 1,000 for every language, so chunking never matters
next to embedding at ~25 chunks/s), and as chunks per wall-clock second, which contention lowers. The process is
pinned to one CPU (`--cpu`) and the tokenizer to one thread.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from pathlib import Path

os.environ["RAYON_NUM_THREADS"] = "1"  # the tokenizer's thread pool: one core means one thread
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import pyarrow

from kg_assets.lib import chunking
from kg_assets.lib.embedding import load_embedder
from kg_assets.lib.languages import GRAMMARS

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_LANGUAGE = {"shellscript": "shell"}  # shiki sample names that differ from ours
GOAL = 1000.0


def corpus(max_bytes: int) -> dict[str, list[tuple[str, bytes]]]:
    """(uri, bytes) of real source files on hand, by language (the languages of `GRAMMARS` and Python), until a
    language has `max_bytes`."""
    wanted = {*GRAMMARS, "python"}
    exec_path = subprocess.run(["git", "--exec-path"], capture_output=True, text=True).stdout.strip()
    roots = [
        REPO_ROOT / "node_modules",
        REPO_ROOT / "build" / "lang-sources",
        Path(pyarrow.__file__).parent / "src",
        REPO_ROOT / "kg_assets",
    ]
    files: dict[str, list[tuple[str, bytes]]] = {}
    sizes: dict[str, int] = {}

    def add(language: str, uri: str, path: Path) -> None:
        if language not in wanted or sizes.get(language, 0) >= max_bytes or not path.is_file():
            return
        if path.stat().st_size <= chunking.MAX_FILE_BYTES:
            data = path.read_bytes()
            if chunking.is_text(data) and not chunking.looks_minified(data):
                files.setdefault(language, []).append((uri, data))
                sizes[language] = sizes.get(language, 0) + len(data)

    for root in roots:
        for path in sorted(root.rglob("*")):
            uri = path.relative_to(root).as_posix()
            if path.suffix == ".sample":
                language = SAMPLE_LANGUAGE.get(path.stem, path.stem)
                ext = next((e for e, lang in chunking.LANGUAGES.items() if lang == language), "")
                add(language, f"samples/{path.stem}{ext}", path)
            elif not uri.endswith(chunking.MINIFIED_SUFFIXES):
                language = chunking.language_of(uri)
                add(chunking.language_of(uri, path.read_bytes()) if language == "c" else language, uri, path)
    add("shell", "git-sh-setup.sh", Path(exec_path) / "git-sh-setup")
    return files


def throughput(
    sources: list[tuple[str, bytes]], count: chunking.TokenCounter, budget: int, seconds: float, repeats: int
) -> tuple[int, float, float]:
    """Chunks per pass over `sources`, and the median chunks per CPU-second and per wall-clock second of `repeats`
    timed loops of >= `seconds` CPU time each."""
    per_pass = sum(len(chunking.chunk_file(uri, data, count, budget)) for uri, data in sources)  # warm-up
    cpu_rates, wall_rates = [], []
    for _ in range(repeats):
        done, c0, t0 = 0, time.process_time(), time.perf_counter()
        while (cpu := time.process_time() - c0) < seconds or done == 0:
            done += sum(len(chunking.chunk_file(uri, data, count, budget)) for uri, data in sources)
        cpu_rates.append(done / cpu)
        wall_rates.append(done / (time.perf_counter() - t0))
    return per_pass, statistics.median(cpu_rates), statistics.median(wall_rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="minimum length of one timed repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpu", type=int, default=0, help="the one CPU to pin to")
    parser.add_argument("--max-kib", type=int, default=1024, help="source per language")
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.cpu})
    embedder = load_embedder("minilm")
    budget = embedder.max_tokens - 2
    files = corpus(args.max_kib * 1024)
    print(f"load average {os.getloadavg()[0]:.1f}; one core (cpu {args.cpu}); budget {budget} tokens")
    print(f"{'language':<11} {'files':>5} {'KiB':>6} {'chunks':>6} {'chunks/CPU-s':>12} {'chunks/wall-s':>13}")
    slow = []
    for language in sorted(files):
        sources = files[language]
        per_pass, cpu_rate, wall_rate = throughput(sources, embedder.count_tokens, budget, args.seconds, args.repeats)
        kib = sum(len(data) for _, data in sources) / 1024
        print(f"{language:<11} {len(sources):>5} {kib:>6.0f} {per_pass:>6} {cpu_rate:>12.0f} {wall_rate:>13.0f}")
        if cpu_rate < GOAL:
            slow.append(language)
    missing = sorted({*GRAMMARS, "python"} - set(files))
    if missing:
        print(f"no sources on hand for: {', '.join(missing)} (run scripts/setup.sh)")
    print(f"load average {os.getloadavg()[0]:.1f}")
    verdict = f"missed by {', '.join(slow)}" if slow else "met by every language"
    print(f"goal >= {GOAL:.0f} chunks per CPU-second: {verdict}")


if __name__ == "__main__":
    main()
