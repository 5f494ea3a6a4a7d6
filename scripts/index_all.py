#!/usr/bin/env python3
"""Build a version from a repository with the same Dagster build job `indexctl build` runs.

    python scripts/index_all.py --repo . --out indexes/versions/v1.staging   # builds version v1 under indexes/
    python scripts/index_all.py --repo . --out data/                         # raw artifacts for `indexctl stage`

With `--out <root>/versions/<v>.staging` the version is built in that root and sealed as `versions/<v>` (publish it
with `indexctl publish <v>`). Any other directory receives the raw artifacts (faiss.index, catalog.duckdb,
index.scip, faiss_idmap.parquet), built in a private root under it (`.kg-build/`, which keeps the run history).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from kg_assets.cli.runs import run_build
from kg_assets.lib.errors import KgError
from kg_assets.lib.fsutil import copy_file
from kg_assets.lib.lifecycle import CATALOG_FILE, FAISS_FILE, IDMAP_FILE, SCIP_FILE, STAGING_SUFFIX, LifecycleRoot


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path("."), help="repository to index (default: .)")
    parser.add_argument("--out", type=Path, required=True, help="<root>/versions/<v>.staging, or any directory")
    parser.add_argument("--embedder", default="minilm")
    parser.add_argument("--factory", default="auto")
    args = parser.parse_args()
    out = args.out.absolute()
    settings = {"embedder": args.embedder, "factory": args.factory}
    try:
        if out.name.endswith(STAGING_SUFFIX) and out.parent.name == "versions":
            version = out.name[: -len(STAGING_SUFFIX)]
            summary = run_build(out.parent.parent, version, args.repo.absolute(), **settings)
            print(f"Built {version} -> {summary['path']} ({summary['chunks']} chunks)")
            print(f"Publish it with: indexctl publish {version}")
            return 0
        private = out / ".kg-build"
        shutil.rmtree(private / "versions", ignore_errors=True)
        summary = run_build(private, "export", args.repo.absolute(), **settings)
        vdir = LifecycleRoot(private).version_dir("export")
        out.mkdir(parents=True, exist_ok=True)
        for name in (FAISS_FILE, CATALOG_FILE, SCIP_FILE, IDMAP_FILE):
            (out / name).unlink(missing_ok=True)
            copy_file(vdir / name, out / name)
        shutil.rmtree(private / "versions", ignore_errors=True)
        names = " ".join((FAISS_FILE, CATALOG_FILE, SCIP_FILE, IDMAP_FILE))
        print(f"Wrote the artifacts of {summary['chunks']} chunks to {out}: {names}")
        return 0
    except KgError as exc:
        print(f"index_all: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
