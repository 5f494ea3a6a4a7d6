"""A subprocess that hammers a lifecycle root, for the crash-safety and concurrency tests.

    python -m kg_assets_tests.lib.lifecycle_worker churn ROOT SAMPLE_DIR   stage and publish new versions forever
    python -m kg_assets_tests.lib.lifecycle_worker flip ROOT N V1 V2 ...   N compare-and-swap flips among versions
    python -m kg_assets_tests.lib.lifecycle_worker read ROOT SECONDS       resolve `current` in a loop
    python -m kg_assets_tests.lib.lifecycle_worker forkserver ROOT         run operations killed at a write step

`forkserver` reads one JSON command a line (`{"op": "stage"|"build"|"publish"|"rollback"|"gc", "args": {...},
"step": N}`), runs it in a forked child with $KG_CRASH_AT_STEP=N (0: no kill) and answers
`{"killed": bool, "code": int, "steps": S}` (S: the write steps an operation that was not killed passed): the
imports are paid once, each kill costs a fork. `build` is the lifecycle path
of `indexctl build --work-dir` (`build_version`) with a sample's files as what its steps computed.

Prints `ready` once imports are done, so the parent can time its kill from there. `flip` prints one JSON line
per successful flip; `read` prints the number of reads and exits non-zero on the first bad read.
"""

from __future__ import annotations

import importlib
import itertools
import json
import os
import random
import signal
import sys
import time
from pathlib import Path

from kg_assets.lib import build, fsutil
from kg_assets.lib.errors import ConflictError, ValidationError
from kg_assets.lib.fsutil import CRASH_ENV, copy_file
from kg_assets.lib.lifecycle import (
    CATALOG_FILE,
    FAISS_FILE,
    IDMAP_FILE,
    MANIFEST,
    SCIP_FILE,
    TUNING_FILE,
    LifecycleRoot,
)


def churn(root: LifecycleRoot, sample: Path) -> None:
    names = {"faiss": "code.faiss", "duckdb": "catalog.duckdb", "scip": "index.scip"}
    for i in itertools.count():
        version = f"c{os.getpid()}-{i}"
        root.stage(
            version,
            sample / names["faiss"],
            sample / names["duckdb"],
            sample / names["scip"],
            idmap_path=sample / "faiss_idmap.parquet",
            tuning_path=sample / "tuning.json",
        )
        root.publish(version)


def flip(root: LifecycleRoot, n: int, versions: list[str]) -> None:
    rng = random.Random(os.getpid())
    for _ in range(n):
        target = rng.choice(versions)
        seen = root.current()
        try:
            result = (root.publish if rng.random() < 0.5 else root.rollback)(target, expect_current=seen)
        except (ConflictError, ValidationError):  # lost the race, or a rollback to a never-published version
            continue
        if result.changed:
            print(json.dumps({"from": result.from_version, "to": result.to_version}), flush=True)


def read(root: LifecycleRoot, seconds: float) -> None:
    reads = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        resolved = Path(os.path.realpath(root.current_link))
        version = root.current()
        for vdir in (resolved, root.versions_dir / version):
            manifest = json.loads((vdir / MANIFEST).read_text())
            for name, entry in manifest["files"].items():
                if (vdir / name).stat().st_size != entry["size"]:
                    sys.exit(f"half-written file {vdir / name}")
        reads += 1
    print(reads)


def forkserver(root: LifecycleRoot) -> None:
    for line in sys.stdin:
        command = json.loads(line)
        steps_read, steps_written = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(steps_read)
            os.environ[CRASH_ENV] = str(command["step"])
            code = 0
            try:
                run_operation(root, command["op"], command["args"])
            except Exception as exc:  # reported through the exit code; the parent checks what it left
                print(f"{command['op']} failed: {exc}", file=sys.stderr, flush=True)
                code = 1
            os.write(steps_written, str(fsutil.crash_steps()).encode())
            os._exit(code)
        os.close(steps_written)
        _, status = os.waitpid(pid, 0)
        with os.fdopen(steps_read) as steps:
            passed = steps.read()
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        reply = {"killed": killed, "code": os.waitstatus_to_exitcode(status), "steps": int(passed or 0)}
        print(json.dumps(reply), flush=True)


SAMPLE_FILES = {
    FAISS_FILE: "code.faiss",
    CATALOG_FILE: "catalog.duckdb",
    SCIP_FILE: "index.scip",
    IDMAP_FILE: "faiss_idmap.parquet",
    TUNING_FILE: "tuning.json",
}


def build_version(root: LifecycleRoot, version: str, sample: Path, work_dir: Path) -> None:
    """What a build run does to the root, step by step, with `sample`'s files as its steps' results: take the
    version's lease (every earlier run of it is dead here), reset its staging directory, claim and record its
    step-output location under `work_dir`, write outputs there and the version's files into staging, drop the
    outputs, seal, release the lease."""
    run_id = f"run-{os.getpid()}"
    root.take_build_lease(version, run_id, "worker", is_dead=lambda _: True)
    staging = root.reset_staging(version)
    work = work_dir / version
    build.claim_work_path(root, sample, version, work, outside=True)
    root.record_work_location(version, str(work))
    for name, source in SAMPLE_FILES.items():
        copy_file(sample / source, work / name)  # a step's output ...
        copy_file(work / name, staging / name)  # ... and the version's file made from it
    build.finalize_outputs(root, version, work)
    root.finalize(version, staging, {})
    root.release_build_lease(version, run_id)


def run_operation(root: LifecycleRoot, op: str, args: dict) -> None:
    if op == "stage":
        sample = Path(args["sample"])
        root.stage(
            args["version"],
            sample / "code.faiss",
            sample / "catalog.duckdb",
            sample / "index.scip",
            idmap_path=sample / "faiss_idmap.parquet",
            tuning_path=sample / "tuning.json",
        )
    elif op == "build":
        build_version(root, args["version"], Path(args["sample"]), Path(args["work"]))
    elif op in ("publish", "rollback"):
        getattr(root, op)(args["version"], expect_current=args["expect"])
    elif op == "gc":
        root.gc(args["keep"], staging_max_age_s=0)


def main() -> None:
    mode, root = sys.argv[1], LifecycleRoot(sys.argv[2])
    for module in ("kg_assets.lib.health", "kg_assets.lib.validation"):  # lifecycle imports them when needed:
        importlib.import_module(module)  # before `ready`, so a kill timed from it lands in an operation
    print("ready", flush=True)
    if mode == "churn":
        churn(root, Path(sys.argv[3]))
    elif mode == "flip":
        flip(root, int(sys.argv[3]), sys.argv[4:])
    elif mode == "read":
        read(root, float(sys.argv[3]))
    elif mode == "forkserver":
        forkserver(root)


if __name__ == "__main__":
    main()
