"""kg-assets benchmarks against raw FAISS/NumPy doing the same work in the same run; each prints ratios.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python scripts/bench.py build  [bench_build.py options]
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python scripts/bench.py tuning [bench_tuning.py options]
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python scripts/bench.py eval   [bench_eval.py options]
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python scripts/bench.py quality [bench_quality.py options]
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python scripts/bench.py serve   [bench_serve.py options]
    .venv/bin/python scripts/bench.py chunking [bench_chunking.py options]
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python scripts/bench.py scale   [bench_scale.py options]
    .venv/bin/python scripts/bench.py static [bench_static.py options]

`build`: `indexctl build` vs the embedder + FAISS train/add on the same inputs, peak memory, no-change rebuild.
`tuning`: `tune --quick/--full` vs a restricted `ParameterSpace.explore` on a 1M-vector IVF-PQ index.
`eval`: the offline eval vs plain `faiss.knn` + `index.search` on the same queries over 1M vectors.
`quality`: NDCG@10 of every search mode on our labelled set and the public semble pack (beside its published figures),
and hybrid vs dense latency.
`serve`: /search of `indexctl serve` (4 clients) vs the engine's search in a warm loop and vs one-shot
`indexctl search`: p50/p99 latency, QPS, and the server's memory with one version and during a swap.
`chunking`: chunks per CPU-second on one core for every language, on real source files (goal >= 1,000).
`scale`: the sharded build's train / encode / merge steps (a process each) for 1, 2, 4 shards vs one raw FAISS
train + add of the same precomputed vectors: time and peak memory per process, as ratios.
`static`: the static embedder's chunks/s against MiniLM's on the same chunks, the time until a progressive build's
fast version answers `indexctl search`, and the memory of a server holding it.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

BENCHES = {
    "build": "bench_build.py",
    "tuning": "bench_tuning.py",
    "eval": "bench_eval.py",
    "quality": "bench_quality.py",
    "serve": "bench_serve.py",
    "chunking": "bench_chunking.py",
    "scale": "bench_scale.py",
    "static": "bench_static.py",
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in BENCHES:
        sys.exit(f"usage: bench.py {{{','.join(BENCHES)}}} [options]")
    script = Path(__file__).with_name(BENCHES[sys.argv[1]])
    sys.argv = [str(script), *sys.argv[2:]]
    runpy.run_path(str(script), run_name="__main__")
