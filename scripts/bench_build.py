"""Benchmark `indexctl build` against its raw parts run directly, in the same run.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python scripts/bench_build.py [--min-chunks 5000] [--source DIR]

Copies Python files from `--source` (default: the installed dagster package) into a scratch repository until
chunking yields at least `--min-chunks` chunks, then:
1. builds it with the real pipeline (one Dagster run, in a subprocess so its peak memory is its own; the memory of
   that process and its children, scip-python included, is also sampled every 0.2 s);
2. runs the raw parts on exactly the same inputs: the embedder over the same texts in a fresh process that
   imports nothing else (its peak RSS is "the model"), FAISS train + add of the same vectors with the same factory;
3. rebuilds with no change (everything reused that can be).
Prints per-stage chunks/s, the ratio build / (raw embed + raw FAISS) (goal <= 1.2), peak memory against
vectors + model (goal < 2x), the no-change rebuild as a fraction of the first build (goal < 0.2), and the load
average before and after (the machine is shared; a noisy ratio wants a re-run when it is quieter).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import faiss  # imported after OMP_WAIT_POLICY is set
import numpy as np

from kg_assets.lib import catalog, chunking, faiss_index
from kg_assets.lib.embedding import embedding_text, load_embedder

MIB = 2**20
_BUILD = """
import json, resource, sys, time
from pathlib import Path
from kg_assets.cli.runs import run_build
t0 = time.perf_counter()
summary = run_build(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))
summary["wall"] = time.perf_counter() - t0
own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
summary["peak_rss_kib"], summary["child_peak_rss_kib"] = own.ru_maxrss, children.ru_maxrss
summary["cpu"] = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime  # scip-python included
import dagster as dg  # the run's instance ($DAGSTER_HOME, set by run_build) holds each asset's metadata
with dg.DagsterInstance.get() as instance:
    summary["asset_meta"] = {
        key: {k: v.value for k, v in event.asset_materialization.metadata.items() if isinstance(v.value, (int, float))}
        for key in ("embeddings", "scip_index")
        if (event := instance.get_latest_materialization_event(dg.AssetKey(key)))
    }
    run_id = instance.get_runs(limit=1)[0].run_id
    kinds = {dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS}
    windows = {}
    for entry in instance.all_logs(run_id, of_type=kinds):
        windows.setdefault(entry.step_key, []).append(entry.timestamp)
    summary["step_windows"] = windows  # step -> [start, end] (epoch seconds)
print(json.dumps(summary, default=str))
"""
_RAW_EMBED = """
import json, resource, sys, time
import numpy as np
from kg_assets.lib.embedding import load_embedder
texts = json.loads(open(sys.argv[1], encoding="utf-8").read())
embedder = load_embedder()
embedder.embed(texts[:1])  # load the model outside the timing (conservative: the build's wall includes it)
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0, c0 = time.perf_counter(), time.process_time()
vectors = embedder.embed(texts)
seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
np.save(sys.argv[2], vectors)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "cpu": cpu, "loaded_rss_kib": loaded, "peak_rss_kib": peak}))
"""


def make_corpus(source: Path, dest: Path, min_chunks: int) -> int:
    """Copy source files (sorted) into `dest` until they chunk into at least `min_chunks` chunks."""
    counter = load_embedder().count_tokens
    total = 0
    for path in sorted(source.rglob("*.py")):
        rel = path.relative_to(source)
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        total += len(chunking.chunk_file(str(rel), path.read_bytes(), counter, 254))
        if total >= min_chunks:
            break
    return total


def tree_rss(pid: int) -> tuple[int, int]:
    """Resident bytes now of `pid` alone and with all its descendants (Linux /proc; 0 for a process gone)."""
    own, total, pending = 0, 0, [pid]
    while pending:
        proc = Path(f"/proc/{pending.pop()}")
        try:
            rss = int((proc / "statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            for task in (proc / "task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
        own, total = own or rss, total + rss
    return own, total


def run_python(snippet: str, *args: str, env: dict[str, str] | None = None) -> tuple[dict, list[tuple[float, ...]]]:
    """Run `snippet` in a fresh interpreter; return the JSON on its last stdout line and samples, every 0.2 s, of
    (time, resident bytes of the process, of the process and its children)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-c", snippet, *args], env=env, stdout=out, stderr=err, text=True)
        samples = []
        while proc.poll() is None:
            samples.append((time.time(), *tree_rss(proc.pid)))
            time.sleep(0.2)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            sys.exit(f"{args[:2]} failed: {err.read().strip().splitlines()[-3:]}")
        return json.loads(out.read().strip().splitlines()[-1]), samples


def run_pipeline(root: Path, version: str, repo: Path) -> dict:
    """One build in a subprocess: its summary, plus sampled peak memory per step and overall (bytes)."""
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    summary, samples = run_python(_BUILD, str(root), version, str(repo), env=env)
    step_peaks = {
        step: tuple(max((s[i] for s in samples if start <= s[0] <= end), default=0) for i in (1, 2))
        for step, (start, end) in summary["step_windows"].items()
    }
    return {**summary, "step_peaks": step_peaks, "tree_peak_bytes": max(s[2] for s in samples)}


def load_line() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-chunks", type=int, default=5000)
    parser.add_argument("--source", type=Path, default=Path(faiss.__file__).parents[1] / "dagster")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kg-bench-"))
    repo, root = work / "repo", work / "indexes"
    expected = make_corpus(args.source, repo, args.min_chunks)
    print(f"corpus: {sum(1 for _ in repo.rglob('*.py'))} files from {args.source}, ~{expected} chunks; {load_line()}")

    first = run_pipeline(root, "b1", repo)
    vdir = Path(first["path"])
    n = first["chunks"]
    print(f"pipeline build: {first['wall']:.1f}s wall, {first['cpu']:.0f}s CPU for {n} chunks; {load_line()}")
    print("  step                              seconds    chunks/s   peak RSS MiB (with children, sampled)")
    for stage, seconds in first["seconds"].items():
        own, tree = first["step_peaks"].get(stage, (0, 0))
        memory = f"{own / MIB:9.0f} ({tree / MIB:.0f})" if own else "        - (too short to sample)"
        print(f"  {stage:<32} {seconds:7.1f}s {n / seconds if seconds else float('inf'):11.1f} {memory}")
    lexical_share = first["seconds"].get("lexical_index", 0.0) / first["wall"]
    print(f"  lexical_index: {100 * lexical_share:.2f}% of the build's wall time (goal <= 5%)")
    embed, scip_meta = first["asset_meta"]["embeddings"], first["asset_meta"]["scip_index"]
    windows = first["step_windows"]
    embed_step, scip_step = windows["embeddings.embed_shard[s0]"], windows["scip_index"]
    overlapped = scip_meta["seconds"] > scip_step[-1] - scip_step[0] + 1  # it reports more than its own step took
    where = "after" if scip_step[0] >= embed_step[-1] else "before"
    print(
        f"  embeddings {embed['seconds']:.1f}s ({embed['chunks_per_second']:.1f} chunks/s); the SCIP indexers "
        + (
            f"ran beside the embedding, which waited {scip_meta['waited_seconds']:.1f}s for them once done"
            if overlapped
            else f"took {scip_meta['seconds']:.1f}s in a step of their own {where} the embedding"
        )
    )

    # Raw parts on the same inputs: the embedder in a process of its own, FAISS here.
    with catalog.connect_read_only(vdir / "catalog.duckdb") as con:
        rows = con.execute("SELECT chunk_id, uri, text FROM chunks ORDER BY chunk_id").fetchall()
    texts_file, vectors_file = work / "texts.json", work / "vectors.npy"
    texts_file.write_text(json.dumps([embedding_text(uri, text) for _, uri, text in rows]), encoding="utf-8")
    raw, _ = run_python(_RAW_EMBED, str(texts_file), str(vectors_file))
    vectors = np.load(vectors_file)
    factory = first["attrs"]["faiss_factory"]
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    t0, c0 = time.perf_counter(), time.process_time()
    base = faiss.index_factory(vectors.shape[1], factory, faiss_index.metric_for(factory))
    if not base.is_trained:
        base.train(vectors)
    index = faiss.IndexIDMap2(base)
    index.add_with_ids(vectors, ids)
    raw_faiss, raw_faiss_cpu = time.perf_counter() - t0, time.process_time() - c0
    raw_total = raw["seconds"] + raw_faiss
    print(
        f"raw embed: {raw['seconds']:.1f}s, {raw['cpu']:.0f}s CPU ({n / raw['seconds']:.1f} chunks/s); "
        f"raw FAISS train+add ({factory}): {raw_faiss:.2f}s; {load_line()}"
    )
    print(
        f"ratio build / raw parts: {first['wall'] / raw_total:.2f} (goal <= 1.2); in CPU seconds "
        f"{first['cpu'] / (raw['cpu'] + raw_faiss_cpu):.2f} (less sensitive to the load of others)"
    )

    peak, model = first["peak_rss_kib"] * 1024, raw["peak_rss_kib"] * 1024
    loaded, vector_bytes = raw["loaded_rss_kib"] * 1024, vectors.nbytes
    print(
        f"peak RSS of the build process {peak / MIB:.0f} MiB vs vectors {vector_bytes / MIB:.1f} MiB + model "
        f"{model / MIB:.0f} MiB (peak of a process embedding the same texts): ratio "
        f"{peak / (vector_bytes + model):.2f} (goal < 2)"
    )
    print(
        f"  against the model just loaded ({loaded / MIB:.0f} MiB after its first text): "
        f"{peak / (vector_bytes + loaded):.2f}; scip-python (child) peak {first['child_peak_rss_kib'] / 1024:.0f} MiB; "
        f"build + children sampled peak {first['tree_peak_bytes'] / MIB:.0f} MiB"
    )

    second = run_pipeline(root, "b2", repo)
    print(
        f"no-change rebuild: {second['wall']:.1f}s = {second['wall'] / first['wall']:.2f} of the first (goal < 0.2); "
        f"re-embedded {second['embedded']}, reused {second['reused']}"
    )
    for stage, seconds in second["seconds"].items():
        print(f"  step {stage:<28} {seconds:7.1f}s")
    print(load_line())
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
