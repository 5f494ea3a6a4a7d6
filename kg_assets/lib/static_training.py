"""Training the static code embedder: a token-vector table fitted to the packaged MiniLM (the teacher).

STUB
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from kg_assets.lib.embedding import Embedder, embedding_text
from kg_assets.lib.progress import Progress


def teacher_features(corpus: pa.Table, teacher: Embedder, *, progress: Progress | None = None) -> np.ndarray:
    """The teacher's vectors of the corpus chunks, embedded exactly as a build embeds them (path header first)."""
    texts = [embedding_text(u, t) for u, t in zip(corpus["uri"].to_pylist(), corpus["text"].to_pylist(), strict=True)]
    return teacher.embed(texts, progress=progress)
