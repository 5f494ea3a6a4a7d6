"""Sharded encoding without Dagster, on precomputed vectors: plan, train once, encode shards, merge."""

from __future__ import annotations

import itertools
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pytest

from kg_assets.lib import build, faiss_index, workdir
from kg_assets.lib.errors import ConflictError, ValidationError
from kg_assets.lib.lifecycle import FAISS_FILE, LifecycleRoot


def write_work(work: Path, files: int = 40, per_file: int = 25, dim: int = 32) -> np.ndarray:
    """A step-output location holding `chunks.parquet` (`files` files of `per_file` chunks, path order) and
    return the chunks' vectors (unit, seeded), which a test writes per shard in place of embedding."""
    uris = [f"pkg/m{i:03d}.py" for i in range(files) for _ in range(per_file)]
    n = len(uris)
    rows = {name: [None] * n for name in build.CHUNK_SCHEMA.names}
    rows.update(
        chunk_id=list(np.random.default_rng(1).permutation(n) * 7919 - 10**6),
        uri=uris,
        language=["python"] * n,
        start_line=[1] * n,
        end_line=[1] * n,
        start_byte=[0] * n,
        end_byte=[1] * n,
        text=["x"] * n,
        content_hash=[str(i) for i in range(n)],
        symbols=[[] for _ in range(n)],
    )
    work.mkdir(parents=True)
    workdir.write_table(work / build.CHUNKS_FILE, pa.table(rows, schema=build.CHUNK_SCHEMA))
    x = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def sharded_index(work: Path, staging: Path, vectors: np.ndarray, shards: int, factory: str) -> faiss.Index:
    ranges = build.plan_shards(work, shards)
    (work / build.SHARDS_DIR).mkdir(exist_ok=True)
    for shard, (start, end) in enumerate(ranges):
        workdir.write_array(build.shard_file(work, shard, ".npy"), vectors[start:end])
    build.train_shared_index(work, factory, seed=0)
    for shard in range(len(ranges)):
        build.encode_shard(work, shard)
    build.merge_shards(work, staging)
    return faiss_index.read_index(staging / FAISS_FILE)


def test_shards_are_contiguous_and_never_split_a_file(tmp_path: Path) -> None:
    write_work(tmp_path / "work", files=10, per_file=7)
    ranges = build.plan_shards(tmp_path / "work", 4)
    assert ranges[0][0] == 0 and ranges[-1][1] == 70 and len(ranges) == 4
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    assert all(start % 7 == 0 for start, _ in ranges)  # every boundary is a file boundary
    assert build.read_plan(tmp_path / "work") == ranges
    assert len(build.plan_shards(tmp_path / "work", 50)) == 10  # no more shards than files
    uris = ["a"] * 90 + ["b", "c", "d", "e"] + ["f"] * 6  # one big file: the small ones still get shards
    (tmp_path / "skewed").mkdir()
    rows = {name: [None] * 100 for name in build.CHUNK_SCHEMA.names} | {"uri": uris}
    workdir.write_table(tmp_path / "skewed" / build.CHUNKS_FILE, pa.table(rows, schema=build.CHUNK_SCHEMA))
    assert build.plan_shards(tmp_path / "skewed", 4) == [(0, 90), (90, 91), (91, 92), (92, 100)]
    assert build.default_shards(19_999) == 1 and build.default_shards(40_000, cores=8) == 2
    assert build.default_shards(1_000_000, cores=8) == 8 and build.default_shards(25_000, cores=1) == 2


@pytest.mark.parametrize("factory", ["Flat", "IVF32,Flat", "IVF32,PQ8x4fs,RFlat"])
def test_merged_shards_equal_one_unsharded_index(tmp_path: Path, factory: str) -> None:
    work = tmp_path / "work"
    vectors = write_work(work)
    ids = build.read_chunks(work).column("chunk_id").to_numpy()
    unsharded, _ = faiss_index.build_index(vectors, ids, factory, seed=0)
    queries = vectors[::10]
    expected = faiss_index.search(unsharded, queries, 10)
    for shards in (1, 2, 4):
        staging = tmp_path / f"staging{shards}"
        staging.mkdir()
        merged = sharded_index(work, staging, vectors, shards, factory)
        assert np.array_equal(faiss_index.external_ids(merged), ids)  # same ids, same row order
        assert faiss_index.factory_string(merged) == faiss_index.factory_string(unsharded)
        got = faiss_index.search(merged, queries, 10)
        assert np.array_equal(got[1], expected[1]) and np.array_equal(got[0], expected[0])
        assert np.array_equal(build.read_embeddings(work), vectors)
        if factory != "IVF32,PQ8x4fs,RFlat":  # fast-scan packs codes per block: equal results, other bytes
            assert faiss.serialize_index(merged).tobytes() == faiss.serialize_index(unsharded).tobytes()


def test_merge_refuses_a_shard_trained_with_another_quantizer(tmp_path: Path) -> None:
    work = tmp_path / "work"
    vectors = write_work(work)
    sharded_index(work, tmp_path, vectors, 2, "IVF32,Flat")
    other = faiss_index.train_index("IVF32,Flat", vectors.shape[1], vectors[::-1])
    start, end = build.read_plan(work)[1]
    ids = build.read_chunks(work).column("chunk_id").to_numpy()[start:end]
    faiss_index.add_vectors(other, vectors[start:end], ids)
    workdir.write_index(build.shard_file(work, 1, ".index"), other)
    with pytest.raises(ValidationError, match="shard 1 was trained with a different quantizer"):
        build.merge_shards(work, tmp_path)


def test_step_outputs_can_live_behind_an_fsspec_url(tmp_path: Path) -> None:
    local = tmp_path / "work"
    vectors = write_work(local)
    work = workdir.location("memory://kg-tests/work")
    workdir.remove_tree(work)
    workdir.ensure_dir(work)
    workdir.write_table(work / build.CHUNKS_FILE, build.read_chunks(local))
    merged = sharded_index(work, tmp_path, vectors, 3, "IVF32,Flat")
    assert merged.ntotal == len(vectors) and np.array_equal(build.read_embeddings(work), vectors)
    workdir.remove_tree(work)
    assert not work.exists()


def test_build_lease_spans_steps_and_is_reclaimed_from_an_ended_run(root: LifecycleRoot) -> None:
    alive = {"run-a"}
    root.take_build_lease("v1", "run-a", "host-1", is_dead=lambda r: r not in alive)
    root.take_build_lease("v1", "run-a", "host-2", is_dead=lambda r: r not in alive)  # another step, elsewhere
    assert root.build_lease("v1")["run_id"] == "run-a"
    with pytest.raises(ConflictError, match="being built by run run-a"):
        root.take_build_lease("v1", "run-b", "host-1", is_dead=lambda r: r not in alive)
    with pytest.raises(ConflictError), root.staging_lock("v1"):  # `indexctl stage v1` is refused meanwhile
        pass
    root.take_build_lease("v1", "run-c", "h", inherits={"run-a"}, is_dead=lambda r: False)  # a re-execution
    assert root.build_lease("v1")["run_id"] == "run-c"
    root.take_build_lease("v1", "run-b", "h", is_dead=lambda r: r == "run-c")  # run-c ended: reclaimed
    assert not root.release_build_lease("v1", "run-c") and root.release_build_lease("v1", "run-b")
    assert root.build_lease("v1") is None and root.build_leases() == {}


def test_gc_keeps_the_staging_directory_of_a_leased_build(root: LifecycleRoot) -> None:
    root.take_build_lease("v1", "run-a", "h", is_dead=lambda r: False)
    root.reset_staging("v1")
    assert "v1.staging" not in root.gc(5, staging_max_age_s=0).removed_staging
    root.release_build_lease("v1", "run-a")
    assert "v1.staging" in root.gc(5, staging_max_age_s=0).removed_staging


def test_step_outputs_recorded_outside_staging_go_with_it(root: LifecycleRoot, tmp_path: Path) -> None:
    """What a build's `--work-dir` leaves (a path or fsspec URL) goes when the next build or stage of the version
    resets its staging directory (gc: `defs/test_sharded_build.py`)."""
    root.versions_dir.mkdir(parents=True)
    for location in (tmp_path / "work" / "v1", workdir.location("memory://kg-tests/recorded/v1")):
        root.reset_staging("v1")
        root.record_work_location("v1", str(location))
        workdir.ensure_dir(location)
        workdir.write_bytes(location / build.CHUNKS_FILE, b"left by a failed run")
        root.reset_staging("v1")
        assert not location.exists() and list(root.staging_dir("v1").iterdir()) == []
