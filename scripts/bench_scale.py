"""Sharded index build vs one raw FAISS train + add of the same precomputed vectors.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python scripts/bench.py scale [--n 100000] [--n 1000000] [--dim 384]

The subject is the pipeline after embedding: the vectors are precomputed (seeded, clustered), written as the
shards' arrays a build's embed steps would have written. For 1, 2 and 4 shards the engine's steps run each in a
process of its own, as the multiprocess or Celery executor runs them: train the one index (on the unsharded
sample), encode every shard into a copy (at most two processes at once: this machine has two cores), merge.
The baseline is one process doing `faiss_index.build_index`'s raw FAISS work: train on the same sample, add.
Printed: the steps' own seconds (train + encodes two at a time + merge, what the ratio compares), the wall
time with the process starts, peak RSS of each process (imports included, as in the baseline), and ratios.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa

from kg_assets.lib import build, faiss_index, workdir

CHUNKS_PER_FILE = 10


def make_vectors(n: int, dim: int) -> np.ndarray:
    """Seeded clustered unit vectors (1,000 centres), the shape of real embeddings."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((1000, dim)).astype(np.float32)
    x = centres[rng.integers(0, 1000, n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_chunks(work: Path, n: int) -> None:
    """A `chunks.parquet` of n chunks, CHUNKS_PER_FILE per file: what the plan cuts at file boundaries."""
    rows = {name: pa.nulls(n, t) for name, t in zip(build.CHUNK_SCHEMA.names, build.CHUNK_SCHEMA.types, strict=True)}
    rows["chunk_id"] = pa.array(np.arange(n, dtype=np.int64) * 7919 - 10**9)
    rows["uri"] = pa.array([f"f{i // CHUNKS_PER_FILE:07d}.py" for i in range(n)])
    workdir.write_table(work / build.CHUNKS_FILE, pa.table(rows, schema=build.CHUNK_SCHEMA))


def step(name: str, work: Path, arg: str) -> dict:
    """One step in this process: `raw` (the baseline), `train`, `encode` (shard `arg`) or `merge`."""
    t0 = time.perf_counter()
    if name == "raw":
        vectors = np.load(work / "vectors.npy")
        ids = build.read_chunks(work).column("chunk_id").to_numpy()
        faiss_index.build_index(vectors, ids, arg)
    elif name == "train":
        build.train_shared_index(work, arg)
    elif name == "encode":
        build.encode_shard(work, int(arg))
    elif name == "merge":
        (work / "out").mkdir(exist_ok=True)
        build.merge_shards(work, work / "out")
    return {"seconds": time.perf_counter() - t0, "peak_mib": peak_mib()}


def peak_mib() -> float:
    """This process's peak RSS since it started (VmHWM: unlike ru_maxrss, not inherited from the forking
    parent across exec)."""
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024


def run_step(name: str, work: Path, arg: str = "") -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--step", name, str(work), arg], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.splitlines()[-1])


def sharded(work: Path, vectors: np.ndarray, shards: int, factory: str) -> dict:
    for old in (work / build.SHARDS_DIR).glob("*"):
        old.unlink()
    (work / build.SHARDS_DIR).mkdir(exist_ok=True)
    ranges = build.plan_shards(work, shards)
    for shard, (start, end) in enumerate(ranges):  # what the embed steps would have written
        workdir.write_array(build.shard_file(work, shard, ".npy"), vectors[start:end])
    t0 = time.perf_counter()
    train = run_step("train", work, factory)
    with ThreadPoolExecutor(max_workers=2) as pool:
        encodes = list(pool.map(lambda s: run_step("encode", work, str(s)), range(len(ranges))))
    merge = run_step("merge", work)
    encode_seconds = sum(e["seconds"] for e in encodes) / min(2, len(encodes))  # two at a time
    return {
        "wall": time.perf_counter() - t0,
        "seconds": train["seconds"] + encode_seconds + merge["seconds"],
        "train": train,
        "encode_seconds": encode_seconds,
        "encode_peak_mib": max(e["peak_mib"] for e in encodes),
        "merge": merge,
    }


def bench(n: int, dim: int) -> None:
    factory = faiss_index.choose_factory(n, dim)
    vectors = make_vectors(n, dim)
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        work = Path(tmp)
        write_chunks(work, n)
        np.save(work / "vectors.npy", vectors)
        raw = run_step("raw", work, factory)
        print(f"\n{n:,} x {dim} vectors, {factory}, {vectors.nbytes / 2**20:,.0f} MiB of vectors")
        print(f"raw FAISS train + add, one process: {raw['seconds']:.1f} s, peak {raw['peak_mib']:,.0f} MiB")
        print("| shards | steps s | / raw | train s | encode s | merge s | wall s (+ process starts) |", end="")
        print(" peak MiB: train / encode / merge | / raw |")
        print("|" + "---|" * 9)
        for shards in (1, 2, 4):
            got = sharded(work, vectors, shards, factory)
            peaks = (got["train"]["peak_mib"], got["encode_peak_mib"], got["merge"]["peak_mib"])
            print(
                f"| {shards} | {got['seconds']:.1f} | {got['seconds'] / raw['seconds']:.2f} | "
                f"{got['train']['seconds']:.1f} | {got['encode_seconds']:.1f} | {got['merge']['seconds']:.1f} | "
                f"{got['wall']:.1f} | "
                f"{' / '.join(f'{p:,.0f}' for p in peaks)} | {max(peaks) / raw['peak_mib']:.2f} |",
                flush=True,
            )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--step":
        print(json.dumps(step(sys.argv[2], Path(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else "")))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, action="append", help="vectors (repeatable; default 100000)")
    parser.add_argument("--dim", type=int, default=384)
    args = parser.parse_args()
    for n in args.n or [100_000]:
        bench(n, args.dim)


if __name__ == "__main__":
    main()
