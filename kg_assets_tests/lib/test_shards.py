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
from kg_assets.lib.lifecycle import FAISS_FILE, WORK_RECORD, LifecycleRoot
from kg_assets.lib.workdir import WorkPath


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


def trained_otherwise(factory: str, dim: int) -> faiss.Index:
    """An empty index of `factory` trained on other vectors than a build's (seeded random ones): other coarse
    centroids, and another PQ codebook where it has one."""
    return faiss_index.train_index(factory, dim, np.random.default_rng(7).standard_normal((256, dim)))


def with_codebook_of(trained: faiss.Index, other: faiss.Index) -> faiss.Index:
    """`trained` (its coarse centroids kept) with the PQ codebook of `other`, an IVF-PQ of the same factory."""
    ivf = faiss.downcast_index(faiss.extract_index_ivf(trained))
    codebook = faiss.downcast_index(faiss.extract_index_ivf(other)).pq.centroids
    faiss.copy_array_to_vector(faiss.vector_to_array(codebook), ivf.pq.centroids)
    ivf.precompute_table()  # the residual tables of the new codebook, as training leaves them
    return trained


def encoded_shard(work: WorkPath, shard: int, index: faiss.Index) -> faiss.Index:
    """`index` (trained, empty) with shard `shard`'s vectors added under their chunk ids, as `encode_shard` adds
    them to the build's trained index."""
    start, end = build.read_plan(work)[shard]
    ids = build.read_chunks(work).column("chunk_id").to_numpy()[start:end]
    faiss_index.add_vectors(index, workdir.read_array(build.shard_file(work, shard, ".npy")), ids)
    return index


def trained_differently(work: WorkPath, part: str) -> faiss.Index:
    """An empty index of the build's factory trained otherwise in `part`: the `coarse quantizer` (and any
    codebook), or on an IVF-PQ build only the `PQ codebook` (the build's trained index with another one)."""
    trained = workdir.read_index(work / build.TRAINED_FILE)
    other = trained_otherwise(faiss_index.factory_string(trained), trained.d)
    return other if part == "coarse quantizer" else with_codebook_of(trained, other)


@pytest.mark.parametrize(
    ("factory", "part"),
    [
        ("IVF32,Flat", "coarse quantizer"),
        ("IVF32,PQ8x4fs,RFlat", "coarse quantizer"),
        ("IVF32,PQ8x4fs,RFlat", "PQ codebook"),
    ],
)
def test_merge_refuses_a_shard_trained_with_another_quantizer(tmp_path: Path, factory: str, part: str) -> None:
    """The merge refuses it naming what differs (ValidationError: exit 4 in the CLI), where FAISS's own
    `merge_from` fails on other coarse centroids with a RuntimeError (an unexpected error, exit 1) and appends
    another codebook's codes without a word, which searches then decode wrongly."""
    work = tmp_path / "work"
    vectors = write_work(work)
    sharded_index(work, tmp_path, vectors, 2, factory)
    encoded = {shard: build.shard_file(work, shard, ".index").read_bytes() for shard in (0, 1)}
    workdir.write_index(build.shard_file(work, 1, ".index"), encoded_shard(work, 1, trained_differently(work, part)))
    with pytest.raises(ValidationError, match=rf"^shard 1 was trained with a different {part} than shard 0 \("):
        build.merge_shards(work, tmp_path)
    build.shard_file(work, 1, ".index").write_bytes(encoded[1])
    workdir.write_index(build.shard_file(work, 0, ".index"), encoded_shard(work, 0, trained_differently(work, part)))
    with pytest.raises(ValidationError, match=r"^shard 0 was not encoded into this build's trained index"):
        build.merge_shards(work, tmp_path)
    build.shard_file(work, 0, ".index").write_bytes(encoded[0])
    workdir.write_index(build.shard_file(work, 1, ".index"), faiss_index.train_index("IVF16,Flat", 32, vectors))
    with pytest.raises(ValidationError, match=r"^shard 1 is a different index than shard 0 \(IVF16,Flat, 32 dim"):
        build.merge_shards(work, tmp_path)
    build.shard_file(work, 1, ".index").write_bytes(encoded[1])
    assert build.merge_shards(work, tmp_path)[0].ntotal == len(vectors)  # the shards as encoded still merge


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
        build.claim_work_path(root, tmp_path / "repo", "v1", location, outside=True)
        root.record_work_location("v1", str(location))
        workdir.write_bytes(location / build.CHUNKS_FILE, b"left by a failed run")
        root.reset_staging("v1")
        assert not location.exists() and list(root.staging_dir("v1").iterdir()) == []


def test_a_recorded_location_no_build_of_the_version_made_is_never_removed(root: LifecycleRoot, tmp_path: Path) -> None:
    """`.work-location` is not trusted (issue 20 item 2): gc and the next build or stage of the version remove the
    location it names only when a build of that version of this root marked it as its own."""
    root.versions_dir.mkdir(parents=True)
    precious = tmp_path / "precious"
    (precious / "sub").mkdir(parents=True)
    (precious / "sub" / "data.txt").write_text("not a build's")

    def removals_spare(named: Path) -> None:
        root.reset_staging("v1")
        (root.staging_dir("v1") / WORK_RECORD).write_text(str(named))
        root.reset_staging("v1")  # the next build or stage of v1
        (root.staging_dir("v1") / WORK_RECORD).write_text(str(named))
        assert root.gc(5, staging_max_age_s=0).removed_staging == ["v1.staging"]
        assert named.exists()

    for named in (precious, precious / "sub" / "data.txt"):
        removals_spare(named)
    assert (precious / "sub" / "data.txt").read_text() == "not a build's"
    elsewhere = tmp_path / "elsewhere" / "v1"
    build.claim_work_path(LifecycleRoot(tmp_path / "other"), tmp_path / "repo", "v1", elsewhere, outside=True)
    mine = tmp_path / "mine" / "v2"
    build.claim_work_path(root, tmp_path / "repo", "v2", mine, outside=True)  # this root's build of v2
    for named in (elsewhere, mine):
        removals_spare(named)
    assert (elsewhere / workdir.OWNER_FILE).is_file() and (mine / workdir.OWNER_FILE).is_file()
