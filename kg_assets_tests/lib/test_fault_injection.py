"""Fault injection: SIGKILL stage, build, publish, rollback and gc at write steps, over and over, and check what
each kill left (`Invariants`): `CURRENT` names a complete, healthy version or nothing, the history agrees with it
and keeps every record it had, no file of a sealed version changed, no staging directory counts as a version, and
the next command succeeds.

Each operation runs in a child forked by one worker process (`lifecycle_worker forkserver`) with
$KG_CRASH_AT_STEP=N, so it dies at its Nth write step (`fsutil.crash_point`). Issue 11's test counts N up until
the operation completes, so every step of every operation is hit; issue 20's draws N at random (fixed seed) over
the steps of each operation, builds included, and a few kills go to real `indexctl` processes at random times.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kg_assets.lib import health
from kg_assets.lib.lifecycle import MANIFEST, STAGING_SUFFIX, LifecycleRoot
from kg_assets_tests.conftest import INDEXCTL, stage_sample
from kg_assets_tests.helpers import SCIP_PYTHON
from kg_assets_tests.sample_artifacts import write_sample
from kg_assets_tests.sample_repo import write_repo

MIN_KILLS = 200
STAGE_ROUNDS = 2  # every step of stage killed twice; stage is the costly operation, the flips and gc go on


class ForkServer:
    """The worker that runs one operation per command in a forked child, killed at the step asked for."""

    def __init__(self, root: LifecycleRoot) -> None:
        command = [sys.executable, "-m", "kg_assets_tests.lib.lifecycle_worker", "forkserver", str(root.root)]
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def run(self, op: str, step: int, **args: Any) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps({"op": op, "step": step, "args": args}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


class Invariants:
    """What every kill must leave intact; `sealed` holds each complete version's manifest as first seen, `history`
    the committed history as last seen, `healthy` the versions whose artifact checks passed once (a sealed
    version's files never change, so once is enough)."""

    def __init__(self, root: LifecycleRoot) -> None:
        self.root = root
        self.sealed: dict[str, bytes] = {}
        self.history: list[dict[str, object]] = []
        self.healthy: set[str] = set()

    def check(self) -> None:
        root = self.root
        versions = root.list_versions()
        assert not [v for v in versions if v.endswith(STAGING_SUFFIX)]
        staging = {p.name for p in root.versions_dir.glob(f"*{STAGING_SUFFIX}")}
        assert {i.version: i.state for i in root.status() if i.version in staging} == dict.fromkeys(staging, "staging")
        current = root.trusted_current()
        if current is None:
            assert not root.current_link.is_symlink()
        else:
            assert current in versions
            root.verify_version(current)
            if current not in self.healthy:
                health.check_artifacts(root, current)
                self.healthy.add(current)
        history = root.history()
        assert (history[-1]["to"] if history else None) == current
        assert history[: len(self.history)] == self.history  # flips only ever append
        self.history = history
        if root.current_link.is_symlink():  # it may lag CURRENT by one flip; it never names anything incomplete
            assert Path(os.readlink(root.current_link)).name in versions
        for version in versions:
            manifest = (root.version_dir(version) / MANIFEST).read_bytes()
            assert self.sealed.setdefault(version, manifest) == manifest
            root.verify_version(version)  # every immutable file still has its sealed sha256


OK = {"killed": False, "code": 0}


def completed(reply: dict[str, object]) -> bool:
    return {key: reply[key] for key in OK} == OK


def _stage_round(server: ForkServer, invariants: Invariants, sample: Path, label: str) -> int:
    """Stage new versions, killing the Nth stage at its Nth step, until one completes; return the kills."""
    root = invariants.root
    for step in range(1, 100):
        version = f"{label}-{step}"
        reply = server.run("stage", step, version=version, sample=str(sample))
        invariants.check()
        if not reply["killed"]:
            assert completed(reply)
            return step - 1
        if version not in root.list_versions():  # the next command succeeds: the same stage again
            assert completed(server.run("stage", 0, version=version, sample=str(sample)))
        invariants.check()
    raise AssertionError("stage never completed")


def _flip_round(server: ForkServer, invariants: Invariants, op: str) -> int:
    """Flip between versions a and b, killing the Nth flip at its Nth step, until one completes."""
    root = invariants.root
    for step in range(1, 100):
        current = root.current()
        target = "a" if current == "b" else "b"
        reply = server.run(op, step, version=target, expect=current)
        invariants.check()
        if not reply["killed"]:
            assert completed(reply) and root.current() == target
            return step - 1
        assert completed(server.run(op, 0, version=target, expect=root.current()))  # a retry completes the flip
        invariants.check()
        assert root.current() == target
    raise AssertionError(f"{op} never completed")


def _copy_version(root: LifecycleRoot, source: str, version: str) -> None:
    """A new complete version with `source`'s files (what gc removes; cheaper than staging one)."""
    hidden = root.versions_dir / f".copy-{version}"
    shutil.copytree(root.version_dir(source), hidden)
    manifest = json.loads((hidden / MANIFEST).read_text())
    (hidden / MANIFEST).write_text(json.dumps({**manifest, "version": version}))
    hidden.rename(root.version_dir(version))


def _gc_round(server: ForkServer, invariants: Invariants, label: str) -> int:
    """Add two versions and gc (keep 2), killing the Nth gc at its Nth step, until one completes."""
    for step in range(1, 100):
        for extra in "xy":
            _copy_version(invariants.root, "a", f"{label}-{step}{extra}")
        reply = server.run("gc", step, keep=2)
        invariants.check()
        if not reply["killed"]:
            assert completed(reply)
            return step - 1
        assert completed(server.run("gc", 0, keep=2))
        invariants.check()
    raise AssertionError("gc never completed")


@pytest.fixture
def shm_root(tmp_path: Path) -> Iterator[LifecycleRoot]:
    """A root on tmpfs where there is one: a SIGKILL does not care about fsync, and hundreds of them cost less."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield LifecycleRoot(tmp_path / "indexes")
        return
    base = Path(tempfile.mkdtemp(prefix="kg-fault-", dir=shm))
    try:
        yield LifecycleRoot(base / "indexes")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_sigkill_at_every_write_step_keeps_the_root_consistent(shm_root: LifecycleRoot, tmp_path: Path) -> None:
    root = shm_root
    samples = [write_sample(tmp_path / f"s{i}", n=64, dim=8, seed=i, factory="Flat")["faiss"].parent for i in (0, 1)]
    server = ForkServer(root)
    invariants = Invariants(root)
    kills: Counter[str] = Counter()
    rounds = 0
    try:
        for version in ("a", "b"):
            assert completed(server.run("stage", 0, version=version, sample=str(samples[0])))
            assert completed(server.run("publish", 0, version=version, expect=root.current()))
        while sum(kills.values()) < MIN_KILLS:
            rounds += 1
            if rounds <= STAGE_ROUNDS:
                kills["stage"] += _stage_round(server, invariants, samples[rounds % 2], f"s{rounds}")
            kills["publish"] += _flip_round(server, invariants, "publish")
            kills["rollback"] += _flip_round(server, invariants, "rollback")
            kills["gc"] += _gc_round(server, invariants, f"g{rounds}")
    finally:
        server.close()
    print(f"fault injection: {sum(kills.values())} kills in {rounds} rounds: {dict(kills)}")
    assert kills["stage"] >= 5 * STAGE_ROUNDS, kills  # each file copied, the manifest written, the rename
    assert all(kills[op] >= 3 * rounds for op in ("publish", "rollback", "gc")), kills
    root.gc(keep=0, staging_max_age_s=0)  # and whatever the kills left behind is cleaned
    assert not list(root.versions_dir.glob(f"*{STAGING_SUFFIX}")) and not list(root.versions_dir.glob(".trash-*"))
    assert not list(root.root.glob(".*.tmp-*"))


SEED = 20  # issue 20: the random test's kills are the same every run
RANDOM_KILLS = 200


class RandomRun:
    """Issue 20's operations on `root`, each killed at a random one of its write steps: new versions staged or
    built, publishes and rollbacks among the complete versions, gc. After a kill the same operation runs again to
    completion (the next command works), and `Invariants` are checked after each."""

    def __init__(self, root: LifecycleRoot, server: ForkServer, samples: list[Path], work: Path, seed: int) -> None:
        self.root, self.server, self.samples, self.work = root, server, samples, work
        self.rng = random.Random(seed)
        self.invariants = Invariants(root)
        self.steps: dict[str, int] = {}  # write steps of a complete run of each operation, as last seen
        self.kills: Counter[str] = Counter()
        self.made = 0

    def run(self, op: str, **args: object) -> None:
        """`op` killed at a random step (the first time: at none, to learn how many it has), then completed."""
        step = self.rng.randint(1, self.steps[op]) if op in self.steps else 0
        reply = self.server.run(op, step, **args)
        self.invariants.check()
        if reply["killed"]:
            self.kills[op] += 1
            if op in ("stage", "build") and args["version"] in self.root.list_versions():
                return  # killed after its version was sealed
            if op in ("publish", "rollback"):
                args = {**args, "expect": self.root.current()}  # compare-and-swap against what is there now
            reply = self.server.run(op, 0, **args)
            self.invariants.check()
        assert completed(reply), (op, args, reply)
        self.steps[op] = max(int(reply["steps"]), 1)

    def one(self) -> None:
        root, rng = self.root, self.rng
        versions, current = root.list_versions(), root.current()
        op = rng.choices(["stage", "build", "publish", "rollback", "gc"], weights=[2, 2, 3, 3, 2])[0]
        if op in ("stage", "build") or len(versions) < 3:
            self.made += 1
            kind = "build" if op == "build" else "stage"
            sample = str(rng.choice(self.samples))
            extra = {"work": str(self.work)} if kind == "build" else {}
            self.run(kind, version=f"{kind[0]}{self.made}", sample=sample, **extra)
        elif op == "publish":
            self.run("publish", version=rng.choice([v for v in versions if v != current]), expect=current)
        elif op == "rollback":
            earlier = sorted(root.ever_current().intersection(versions) - {current})
            if earlier:
                self.run("rollback", version=rng.choice(earlier), expect=current)
        else:
            self.run("gc", keep=rng.randint(1, 3))


def test_sigkill_at_random_points_of_every_operation_keeps_the_root_consistent(
    shm_root: LifecycleRoot, tmp_path: Path
) -> None:
    """Issue 20: at least RANDOM_KILLS kills, spread over stage, build, publish, rollback and gc at random write
    steps (seed SEED); every kill leaves `Invariants` true and the operation then completes."""
    root = shm_root
    samples = [write_sample(tmp_path / f"s{i}", n=64, dim=8, seed=i, factory="Flat")["faiss"].parent for i in (0, 1)]
    server = ForkServer(root)
    started = time.monotonic()
    runner = RandomRun(root, server, samples, root.root.parent / "work", SEED)
    try:
        while sum(runner.kills.values()) < RANDOM_KILLS:
            runner.one()
    finally:
        server.close()
    kills = runner.kills
    print(f"random fault injection: {sum(kills.values())} kills in {time.monotonic() - started:.0f} s: {dict(kills)}")
    assert all(kills[op] >= 20 for op in ("stage", "build", "publish", "rollback", "gc")), kills
    root.gc(keep=0, staging_max_age_s=0)  # and whatever the kills left behind is cleaned
    assert not list(root.versions_dir.glob(f"*{STAGING_SUFFIX}")) and not list(root.versions_dir.glob(".trash-*"))
    assert not list(root.root.glob(".*.tmp-*")) and not list((root.root.parent / "work").iterdir())
    left = {p.name for p in (root.root / ".locks").iterdir()}
    assert left == {f"{v}.lock" for v in root.list_versions()} | {f"{v}.read" for v in root.list_versions()} & left


def test_sigkill_of_indexctl_verbs_at_random_times_keeps_the_root_consistent(
    cli_env: dict[str, str], samples: dict, tmp_path: Path
) -> None:
    """Issue 20: the same invariants when real `indexctl` processes (stage, publish, rollback, gc, build) are
    SIGKILLed at random times (seed SEED) inside their Dagster runs; then gc cleans what they left."""
    rng = random.Random(SEED)
    root = LifecycleRoot(cli_env["KG_INDEXES_DIR"])
    for version, sample in (("v1", "a"), ("v2", "b")):
        stage_sample(root, version, samples[sample])
        root.publish(version)
    invariants = Invariants(root)
    invariants.check()
    repo = write_repo(tmp_path / "repo")
    sample = samples["a"]
    plan: list[tuple[float, float, list[str]]] = []
    # Kill times from the start of each process, drawn within how long the verb takes even on a quiet machine
    # (its imports and Dagster run alone take longer than the low end), so most kills land inside it; one that
    # finishes first is checked the same way.
    for i in range(2):
        plan += [
            (0.3, 2.0, ["stage", f"s{i}", str(sample["faiss"]), str(sample["duckdb"]), str(sample["scip"])]),
            (0.3, 2.0, ["publish", "<other>"]),
            (0.3, 2.0, ["rollback", "<other>"]),
            (0.3, 2.0, ["gc", "--keep", "1", "--staging-max-age", "0"]),
        ]
        if SCIP_PYTHON.exists():
            plan.append((1.0, 8.0, ["build", f"b{i}", "--repo", str(repo)]))
    kills = Counter()
    for low, high, args in plan:
        args = [("v1" if root.current() == "v2" else "v2") if a == "<other>" else a for a in args]
        proc = subprocess.Popen([*INDEXCTL, *args], env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(low, high))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills[args[0]] += 1
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode in (0, -signal.SIGKILL), (args, stderr)
        invariants.check()
    print(f"indexctl fault injection: {sum(kills.values())} kills: {dict(kills)}")
    assert kills, "no verb was killed: every one finished before its kill time"
    done = subprocess.run([*INDEXCTL, "gc", "--keep", "5", "--staging-max-age", "0"], env=cli_env, capture_output=True)
    assert done.returncode == 0, done.stderr
    invariants.check()
    assert not list(root.versions_dir.glob(f"*{STAGING_SUFFIX}")) and not list(root.versions_dir.glob(".trash-*"))
