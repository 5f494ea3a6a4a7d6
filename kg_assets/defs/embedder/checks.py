"""`embedder_eval`: the trained static model on both labelled sets, through the real build and search; blocks when it
falls below the figures the committed model recorded."""

import dagster as dg

from kg_assets.defs.embedder.assets import static_embedder
from kg_assets.defs.embedder.resources import EmbedderTraining
from kg_assets.lib import embedder_eval

BENCH_COMMAND = "scripts/bench.py quality --set all --embedder static:DIR --record"


@dg.asset_check(
    asset=static_embedder,
    name="embedder_eval",
    blocking=True,
    description="Our labelled set and the public semble pack built and searched with the new model "
    f"({BENCH_COMMAND}): dense and hybrid NDCG@10 per set, recorded in its provenance.json; fails when any is "
    "more than 0.01 below the committed model's recorded figure. A trial run (benchmarks off) warns.",
)
def embedder_eval_check(
    context: dg.AssetCheckExecutionContext, embedder_training: EmbedderTraining
) -> dg.AssetCheckResult:
    settings = embedder_training.settings()
    if not settings.benchmarks:
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"benchmarks": "off (a trial run): the labelled sets were not measured; do not commit it"},
        )
    recorded = embedder_eval.committed_figures()
    figures = embedder_eval.benchmark_figures(settings.out)  # also recorded in the new model's provenance
    found = embedder_eval.regressions(figures, recorded)
    for line in found:
        context.log.error(f"the new static model regressed: {line}")
    return dg.AssetCheckResult(
        passed=not found,
        metadata={
            "figures": dg.MetadataValue.json(figures),
            "recorded": dg.MetadataValue.json(recorded),
            "regressions": dg.MetadataValue.json(found),
        },
    )
