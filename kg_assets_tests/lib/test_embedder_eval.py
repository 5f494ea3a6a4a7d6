"""What the `embedder_eval` check reads of the quality bench's report, and when it blocks."""

from kg_assets.lib.embedder_eval import PACK_SUMMARY, headline, regressions


def _report(ours_hybrid: float, pack_dense: float) -> dict:
    """The shape `scripts/bench.py quality --json` writes (only the parts the check reads, plus a neighbour)."""
    ours = {
        mode: {"all": {"ndcg_at_k": value, "mrr_at_k": 0.0}, "semantic": {"ndcg_at_k": 0.0}}
        for mode, value in (("dense", 0.5), ("hybrid", ours_hybrid), ("lexical", 0.4))
    }
    return {
        "ours": {"by_category": ours, "by_language": {}},
        "semble": {PACK_SUMMARY: {"dense": pack_dense, "hybrid": 0.85, "published": {"semble": 0.845}}},
        "latency_ms": {"dense": 1.0},
    }


def test_headline_reads_each_set_and_mode() -> None:
    assert headline(_report(0.71, 0.62)) == {
        "ours": {"dense": 0.5, "hybrid": 0.71},
        "semble": {"dense": 0.62, "hybrid": 0.85},
    }


def test_a_drop_beyond_the_tolerance_blocks_and_names_the_set_and_mode() -> None:
    recorded = headline(_report(0.71, 0.62))
    assert regressions(headline(_report(0.705, 0.615)), recorded) == []
    found = regressions(headline(_report(0.69, 0.62)), recorded)
    assert found == ["ours hybrid: 0.690 < recorded 0.710 - 0.01"]
    assert regressions(headline(_report(0.71, 0.50)), recorded) == ["semble dense: 0.500 < recorded 0.620 - 0.01"]
    assert "not measured" in regressions({"ours": recorded["ours"]}, recorded)[0]
