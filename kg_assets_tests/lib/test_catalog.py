"""Reading vectors out of a catalog, with and without the memory-mapped cache."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np

from kg_assets.lib import catalog
from kg_assets_tests.sample_artifacts import write_sample


def test_chunk_vectors_are_ordered_by_id_and_the_cache_returns_the_same_arrays(tmp_path: Path) -> None:
    sample = write_sample(tmp_path / "a", n=300, dim=8)  # rows are stored in random id order
    with duckdb.connect(str(sample["duckdb"]), read_only=True) as con:
        stored = dict(con.execute("SELECT chunk_id, embedding FROM chunks").fetchall())
    assert list(stored) != sorted(stored)
    ids, vectors = catalog.chunk_vectors(sample["duckdb"])
    assert list(ids) == sorted(stored)
    np.testing.assert_array_equal(vectors, np.array([stored[i] for i in ids], dtype=np.float32))
    cache = tmp_path / "cache" / "digest"
    first = catalog.chunk_vectors(sample["duckdb"], cache)
    assert (cache / "ids.npy").is_file() and (cache / "vectors.npy").is_file()
    again_ids, again_vectors = catalog.chunk_vectors(sample["duckdb"], cache)
    assert isinstance(again_vectors, np.memmap) and not again_vectors.flags.writeable
    for got in (first, (again_ids, again_vectors)):
        np.testing.assert_array_equal(got[0], ids)
        np.testing.assert_array_equal(got[1], vectors)
