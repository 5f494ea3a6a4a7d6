"""The public semble benchmark pack (`../shared/benchmarks/semble-public`): unpack, questions, scoring.

Each archive is checked against its sha256 and unpacked (into a temporary directory, then renamed, so a checkout
is complete or absent) under `build/bench/semble/<name>`; the directory indexed and searched is
`<name>/<benchmark_root>`. Scoring is the pack's README, exactly: a result path matches a target path when they are
equal or either ends with `/` + the other; a span target also needs the result's lines to overlap it; binary gains,
each target counted once at the rank of its first match, the ideal DCG over min(10, targets) ranks; a repository is
the mean over its queries, the summary the mean over repositories.
"""

from __future__ import annotations

import hashlib
import json
import math
import tarfile
import tempfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
PACK = PROJECT.parent / "shared" / "benchmarks" / "semble-public"
DEST = PROJECT / "build" / "bench" / "semble"


def load_specs(pack: Path = PACK) -> list[dict]:
    """The pack's repositories (`repos.json`), each with its `questions` (its annotation file)."""
    specs = json.loads((pack / "repos.json").read_text(encoding="utf-8"))
    for spec in specs:
        spec["questions"] = json.loads((pack / "annotations" / f"{spec['name']}.json").read_text(encoding="utf-8"))
    return specs


def reference(pack: Path = PACK) -> dict:
    """Published figures per repository (`reference.json`'s `repos`: semble and its baselines)."""
    return json.loads((pack / "reference.json").read_text(encoding="utf-8"))["repos"]


def materialize(spec: dict, dest: Path = DEST, pack: Path = PACK) -> Path:
    """The directory to index, `dest/<name>/<benchmark_root>`, unpacking the checked archive when absent."""
    checkout = dest / spec["name"]
    if not checkout.is_dir():
        archive = pack / spec["archive"]
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        if digest != spec["sha256"]:
            raise RuntimeError(f"{archive}: sha256 {digest} is not the pinned {spec['sha256']}")
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{spec['name']}-", dir=dest) as tmp:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
            (Path(tmp) / spec["name"]).rename(checkout)
    return checkout / (spec.get("benchmark_root") or "")


def paths_match(result: str, target: str) -> bool:
    """semble's suffix match: equal, or either path ends with `/` followed by the other."""
    result, target = result.replace("\\", "/"), target.replace("\\", "/")
    return result == target or result.endswith("/" + target) or target.endswith("/" + result)


def _satisfies(hit: tuple[str, int, int], target: str | dict) -> bool:
    uri, start, end = hit
    if isinstance(target, str):
        return paths_match(uri, target)
    return paths_match(uri, target["path"]) and start <= target["end_line"] and end >= target["start_line"]


def ndcg_at_k(hits: list[tuple[str, int, int]], targets: list[str | dict], k: int = 10) -> float:
    """NDCG@k of ranked (uri, start line, end line) hits against a query's `relevant` + `secondary` targets."""
    first_ranks = set()
    for target in targets:
        rank = next((r for r, hit in enumerate(hits[:k], start=1) if _satisfies(hit, target)), None)
        if rank is not None:
            first_ranks.add(rank)
    dcg = sum(1 / math.log2(rank + 1) for rank in first_ranks)
    ideal = sum(1 / math.log2(rank + 1) for rank in range(1, min(k, len(targets)) + 1))
    return dcg / ideal if ideal else 0.0
