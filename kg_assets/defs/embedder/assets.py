"""The `embedder` group: the static code embedder made from the packaged MiniLM and registry source code.

teacher -> distilled -> code_corpus -> teacher_features -> static_embedder, each step's files in the training
work directory (`kg_assets.lib.static_pipeline`), the model written where `EmbedderTraining.out` says.
"""

import dagster as dg

from kg_assets.defs.embedder.resources import EmbedderTraining
from kg_assets.lib import progress, static_pipeline
from kg_assets.lib.embedding import MiniLMOnnx

EMBEDDER_GROUP = "embedder"


def _metadata(report: dict) -> dict:
    """A step's report as asset metadata: numbers and strings as they are, anything nested as JSON."""
    return {k: dg.MetadataValue.json(v) if isinstance(v, dict | list) else v for k, v in report.items()}


@dg.asset(
    group_name=EMBEDDER_GROUP,
    kinds={"onnx"},
    description="The teacher: all-MiniLM-L6-v2 int8 ONNX as every full version embeds with it (fingerprint, sha256).",
)
def teacher(embedder_training: EmbedderTraining) -> dg.MaterializeResult:
    report = static_pipeline.describe_teacher(embedder_training.settings(), MiniLMOnnx())
    return dg.MaterializeResult(metadata=_metadata(report))


@dg.asset(
    deps=[teacher],
    group_name=EMBEDDER_GROUP,
    kinds={"numpy"},
    description="Every vocabulary token through the teacher alone ([CLS] token [SEP], mean-pooled): V x 384.",
)
def distilled(context: dg.AssetExecutionContext, embedder_training: EmbedderTraining) -> dg.MaterializeResult:
    report = static_pipeline.distill(
        embedder_training.settings(), MiniLMOnnx(), progress.log_progress(context.log.info, "distilling tokens")
    )
    return dg.MaterializeResult(metadata=_metadata(report))


@dg.asset(
    deps=[teacher],
    group_name=EMBEDDER_GROUP,
    kinds={"parquet"},
    description="Chunks of the registry packages the corpus manifest pins (sha256-verified), cut by the build's "
    "chunker; refused when the manifest names a benchmark's repository.",
)
def code_corpus(context: dg.AssetExecutionContext, embedder_training: EmbedderTraining) -> dg.MaterializeResult:
    report = static_pipeline.build_corpus(embedder_training.settings(), MiniLMOnnx())
    context.log.info(f"{report['chunks']} chunks from {report['sources']} packages")
    return dg.MaterializeResult(metadata=_metadata(report))


@dg.asset(
    deps=[code_corpus, teacher],
    group_name=EMBEDDER_GROUP,
    kinds={"numpy"},
    description="The teacher's vectors of the corpus chunks (the slow step), cached per corpus and teacher.",
)
def teacher_features(context: dg.AssetExecutionContext, embedder_training: EmbedderTraining) -> dg.MaterializeResult:
    report = static_pipeline.featurize(
        embedder_training.settings(), MiniLMOnnx(), progress.log_progress(context.log.info, "teacher features")
    )
    return dg.MaterializeResult(metadata=_metadata(report))


@dg.asset(
    deps=[distilled, teacher_features],
    group_name=EMBEDDER_GROUP,
    kinds={"numpy"},
    description="The static code model: token vectors fitted to the teacher's chunk vectors, int8, with "
    "provenance.json (teacher, corpus digest, settings, commit, held-out figures).",
)
def static_embedder(context: dg.AssetExecutionContext, embedder_training: EmbedderTraining) -> dg.MaterializeResult:
    provenance = static_pipeline.train(embedder_training.settings(), MiniLMOnnx(), context.log.info)
    evaluation = provenance["evaluation"]
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(provenance["out"]),
            "bytes": provenance["bytes"],
            "ridge": provenance["settings"]["ridge"],
            "mrr_at_10_static": evaluation["static"]["mrr_at_10"],
            "mrr_at_10_distilled": evaluation["distilled"]["mrr_at_10"],
            "mrr_at_10_minilm": evaluation["minilm"]["mrr_at_10"],
            "evaluation": dg.MetadataValue.json(evaluation),
            "seconds": dg.MetadataValue.json(provenance["seconds"]),
        }
    )


EMBEDDER_ASSETS = [teacher, distilled, code_corpus, teacher_features, static_embedder]
