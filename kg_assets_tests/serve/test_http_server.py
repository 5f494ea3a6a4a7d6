"""`indexctl serve` over loopback: the API, hot swap under load, reader leases against gc, SIGKILL mid-swap."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import duckdb

from kg_assets.lib.fsutil import atomic_write_json, atomic_write_text
from kg_assets.lib.lifecycle import CATALOG_FILE, LifecycleRoot
from kg_assets.lib.tuning import TUNING_FILE
from kg_assets.serve.http_server import exposure_warning, url_of
from kg_assets_tests.conftest import INDEXCTL, published_state, stage_sample
from kg_assets_tests.serve.conftest import Server

QUERIES = ["split text into words", "Circle area", "hypotenuse", "parse a config file", "tokenize"]


def indexctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*INDEXCTL, *args], env=env, capture_output=True, text=True, timeout=300)


def chunk_ids(root: LifecycleRoot, version: str) -> set[int]:
    with duckdb.connect(str(root.version_dir(version) / CATALOG_FILE), read_only=True) as con:
        return {row[0] for row in con.execute("SELECT chunk_id FROM chunks").fetchall()}


def test_search_answers_what_indexctl_search_does_and_chunks_and_health(
    server: Server, served_root: LifecycleRoot, cli_env: dict[str, str]
) -> None:
    for mode in ("hybrid", "lexical"):
        done = indexctl(cli_env, "search", "split text into words", "-k", "5", "--mode", mode, "--json")
        assert done.returncode == 0, done.stderr
        expected = json.loads(done.stdout)
        status, got = server.get(f"/search?q=split+text+into+words&k=5&mode={mode}")
        assert status == 200
        assert got == {"version": "v1", "mode": mode, "results": expected["hits"]}
        body = json.dumps({"query": "split text into words", "k": 5, "mode": mode}).encode()
        assert server.post("/search", body) == (200, got)
    status, hits = server.get("/search?q=hypotenuse")
    assert status == 200 and len(hits["results"]) == 10 and hits["mode"] == "hybrid"
    top = hits["results"][0]
    status, chunk = server.get(f"/chunks/{top['chunk_id']}")
    assert status == 200
    assert chunk["version"] == "v1" and chunk["uri"] == top["uri"] and "def hypotenuse" in chunk["text"]
    assert (chunk["start_line"], chunk["end_line"]) == (top["start_line"], top["end_line"])
    status, state = server.get("/health")
    assert status == 200
    assert state["status"] == "ok" and state["version"] == "v1" and state["loaded_at"]
    assert state["queries_served"] == 5
    assert server.get("/chunks/12345") == (404, {"error": "version v1 has no chunk 12345"})


BAD_REQUESTS = [
    ("GET", "/search", "missing query parameter q"),
    ("GET", "/search?q=", "the query is empty"),
    ("GET", "/search?q=%20%20", "the query is empty"),
    ("GET", "/search?q=x&k=0", "k must be between 1 and 1000, got 0"),
    ("GET", "/search?q=x&k=1001", "k must be between 1 and 1000, got 1001"),
    ("GET", "/search?q=x&k=ten", "k must be an integer, got 'ten'"),
    ("GET", "/search?q=x&mode=fuzzy", "unknown mode 'fuzzy': choose one of hybrid, dense, lexical, symbol"),
    ("POST", b"{not json", "the body is not JSON"),
    ("POST", b"[1, 2]", "the body must be a JSON object"),
    ("POST", b'{"k": 3}', 'the body needs "query", a string'),
    ("POST", b'{"query": "x", "k": true}', "k must be an integer, got true"),
    ("POST", b'{"query": "x", "k": 5000}', "k must be between 1 and 1000, got 5000"),
    ("POST", b'{"query": "x", "mode": 3}', "mode must be a string"),
    ("POST", b'{"query": "x", "k": ' + b"9" * 5000 + b"}", "the body has a number of 5000 digits"),
    ("POST", b"[" * 100_000 + b"]" * 100_000, "the body is JSON nested too deeply"),
    ("POST", '{"query": "x", "k": "\u0663"}'.encode(), "k must be an integer, got '\u0663'"),  # ARABIC-INDIC THREE
    ("GET", "/search?q=x&k=%D9%A3", "k must be an integer, got '\u0663'"),
    ("POST", b'{"query": "x", "k": NaN}', "the body is not strict JSON: NaN is not a number"),
    ("POST", b"\xff\xfe", "the body is not JSON"),
    ("GET", "/chunks/abc", "chunk id must be an integer, got 'abc'"),
    ("GET", "/chunks/99999999999999999999", "is not a signed 64-bit integer"),
]


def test_bad_requests_get_400_and_health_is_503_before_anything_is_published(
    root: LifecycleRoot, cli_env: dict[str, str]
) -> None:
    """Requests are checked before any version is touched, so a server of an empty root answers them too."""
    running = Server(cli_env)
    try:
        assert running.lines[-1].startswith("serving nothing yet (no version is published under ")
        for method, what, message in BAD_REQUESTS:
            status, body = running.get(what) if method == "GET" else running.post("/search", what)
            assert status == 400, (what, body)
            assert message in body["error"] and "\n" not in body["error"], (what, body)
        status, state = running.get("/health")
        assert status == 503
        assert state["status"] == "unavailable" and state["version"] is None
        assert state["error"].startswith("no version is published under ")
        status, body = running.get("/search?q=anything")
        assert status == 503 and body["error"].startswith("no version is published")
    finally:
        assert running.stop() == 0
    assert running.lines[-1] == "stopped"
    assert not root.root.exists()  # a reader creates nothing


def test_publish_rollback_flips_under_load_drop_no_query(
    server: Server, served_root: LifecycleRoot, cli_env: dict[str, str]
) -> None:
    """4 clients search while the CLI flips publish/rollback 20 times: every answer is a 200 from a complete
    version whose chunks it names, and /health serves the new CURRENT within 2 s of each flip."""
    ids = {v: chunk_ids(served_root, v) for v in ("v1", "v2")}
    assert ids["v1"] != ids["v2"]
    flipping = threading.Event()
    flipping.set()
    answers: list[list[tuple[int, Any]]] = [[] for _ in range(4)]

    def client(n: int) -> None:
        count = 0
        while (flipping.is_set() or count < 250) and count < 1000:
            query = QUERIES[(n + count) % len(QUERIES)]
            if count % 2:
                got = server.post("/search", json.dumps({"query": query, "k": 10}).encode())
            else:
                got = server.get(f"/search?q={query.replace(' ', '+')}&k=10&mode=hybrid")
            answers[n].append(got)
            count += 1
            time.sleep(0.1)  # leaves the flipping CLI some of the two cores

    clients = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in clients:
        thread.start()
    lags, flips = [], []
    try:
        for flip in range(20):
            action, target = ("publish", "v2") if flip % 2 == 0 else ("rollback", "v1")
            before = served_root.current_file.read_bytes()
            # the next flip starts once this one is served, while its process still finishes its Dagster run
            proc = subprocess.Popen([*INDEXCTL, action, target], env=cli_env, stdout=subprocess.PIPE, text=True)
            flips.append(proc)
            while served_root.current_file.read_bytes() == before:  # the flip's commit point
                assert proc.poll() is None or served_root.current_file.read_bytes() != before, "flip failed"
                time.sleep(0.005)
            lags.append(server.wait_for_version(target, 2.0))
        assert [proc.wait(120) for proc in flips] == [0] * 20
    finally:
        flipping.clear()
        for thread in clients:
            thread.join(300)
    responses = [answer for per_client in answers for answer in per_client]
    assert len(responses) >= 1000
    assert [status for status, _ in responses if status != 200] == []
    for _, body in responses:
        assert body["version"] in ids and body["results"]
        assert {hit["chunk_id"] for hit in body["results"]} <= ids[body["version"]]
    served = {body["version"] for _, body in responses}
    assert served == {"v1", "v2"}
    print(f"{len(responses)} searches, 20 flips, served CURRENT after {max(lags):.2f} s at most")


def test_a_version_that_fails_to_load_is_not_served_and_gc_skips_the_served_one(
    server: Server, served_root: LifecycleRoot, cli_env: dict[str, str], samples: dict[str, dict[str, Path]]
) -> None:
    # complete, publishable versions no server can load (synthetic catalogs without what search reads)
    stage_sample(served_root, "v3", samples["a"])
    stage_sample(served_root, "v4", samples["b"])
    served_root.publish("v3")
    served_root.publish("v4")
    deadline = time.monotonic() + 10
    while (state := server.get("/health")[1]).get("load_error", {}).get("version") != "v4":
        assert time.monotonic() < deadline, state
        time.sleep(0.05)
    assert state["status"] == "degraded" and state["version"] == "v1"
    assert "\n" not in state["load_error"]["error"]
    assert server.get("/search?q=hypotenuse")[1]["version"] == "v1"
    # protected: v4 (current) and v3 (the one it replaced); v1 is only leased by the server, v2 by nobody
    done = indexctl(cli_env, "gc", "--keep", "1", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["removed_versions"] == ["v2"] and report["in_use"] == ["v1"]
    assert sorted(report["kept"]) == ["v1", "v3", "v4"]
    served_root.verify_version("v1")
    assert server.get("/search?q=hypotenuse")[0] == 200
    # a checksum mismatch is not served either: CURRENT pointed at a corrupted copy of v1
    shutil.copytree(served_root.version_dir("v1"), served_root.versions_dir / "v5")
    manifest = json.loads((served_root.version_dir("v5") / "manifest.json").read_text())
    manifest["version"] = "v5"
    (served_root.version_dir("v5") / "manifest.json").write_text(json.dumps(manifest))
    with open(served_root.version_dir("v5") / CATALOG_FILE, "r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00\xff")
    served_root.current_file.write_text("v5")
    deadline = time.monotonic() + 10
    while (state := server.get("/health")[1]).get("load_error", {}).get("version") != "v5":
        assert time.monotonic() < deadline, state
        time.sleep(0.05)
    assert "does not match its manifest sha256" in state["load_error"]["error"]
    assert state["version"] == "v1"


def test_a_new_tuning_profile_of_the_served_version_is_loaded_and_a_bad_one_is_not(
    server: Server, served_root: LifecycleRoot
) -> None:
    profile = served_root.version_dir("v1") / TUNING_FILE

    def reloaded(since: str) -> dict[str, Any]:
        deadline = time.monotonic() + 5
        while (state := server.get("/health")[1])["loaded_at"] == since and "load_error" not in state:
            assert time.monotonic() < deadline, state
            time.sleep(0.05)
        return state

    first = server.get("/health")[1]
    atomic_write_json(profile, {"overrides": {}})  # tune writes the profile this way: a new file renamed over it
    state = reloaded(first["loaded_at"])
    assert state["status"] == "ok" and state["version"] == "v1"
    atomic_write_json(profile, {"k_factor": -2})
    state = reloaded(state["loaded_at"])
    assert state["status"] == "degraded" and state["load_error"]["version"] == "v1"
    assert "k_factor must be a finite positive" in state["load_error"]["error"]
    assert server.get("/search?q=hypotenuse")[0] == 200
    atomic_write_json(profile, {})
    deadline = time.monotonic() + 5
    while (state := server.get("/health")[1])["status"] != "ok":
        assert time.monotonic() < deadline, state
        time.sleep(0.05)


def test_sigkill_during_a_swap_leaves_the_root_intact_and_a_restart_serves_current(
    server: Server, served_root: LifecycleRoot, cli_env: dict[str, str]
) -> None:
    done = indexctl(cli_env, "publish", "v2")
    assert done.returncode == 0, done.stderr
    time.sleep(0.4)  # the watcher has seen CURRENT move and is loading v2 beside v1
    before = published_state(served_root)
    server.kill()
    assert published_state(served_root) == before
    for version in ("v1", "v2"):
        served_root.verify_version(version)
    report = served_root.gc(0, dry_run=True)  # the dead server's leases went with it
    assert report.in_use == []
    restarted = Server(cli_env)
    try:
        assert restarted.get("/health")[1]["version"] == "v2"
        assert restarted.lines[-1].startswith("serving v2 on http://127.0.0.1:")
    finally:
        assert restarted.stop() == 0


def test_serve_does_not_import_dagster(tmp_path: Path) -> None:
    probe = (
        "import sys\n"
        "from kg_assets.cli.main import main\n"
        "try:\n"
        "    main(['--root', sys.argv[1], 'serve', '--host', '256.0.0.1'])\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 2, exc.code  # no address to listen on, found after importing the server\n"
        "assert 'kg_assets.serve.http_server' in sys.modules\n"
        "assert 'dagster' not in sys.modules, 'serve must not import dagster'\n"
    )
    done = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "--host '256.0.0.1' is not an address to listen on" in done.stderr


def test_a_fifo_as_current_blocks_neither_the_watcher_nor_sigterm(server: Server, served_root: LifecycleRoot) -> None:
    """Issue 20 item 9: with a FIFO as CURRENT the watcher blocked forever opening it (the server never followed
    CURRENT again and SIGTERM printed "stopped" but never exited); now the FIFO is a load error, the old version
    keeps serving, the next CURRENT is followed, and SIGTERM ends the server."""
    fifo = served_root.root / "fifo"
    os.mkfifo(fifo)
    os.replace(fifo, served_root.current_file)
    deadline = time.monotonic() + 10
    while (state := server.get("/health")[1]).get("load_error", {}).get("version") != "CURRENT":
        assert time.monotonic() < deadline, state
        time.sleep(0.05)
    assert state["status"] == "degraded" and state["version"] == "v1"
    assert "not a regular file" in state["load_error"]["error"]
    assert server.get("/search?q=hypotenuse")[0] == 200
    atomic_write_text(served_root.current_file, "v2")
    server.wait_for_version("v2", 30)
    os.mkfifo(fifo)
    os.replace(fifo, served_root.current_file)
    time.sleep(1)  # the watcher has polled the FIFO
    assert server.stop() == 0


def test_health_names_a_bad_current_by_its_path_never_its_contents(
    root: LifecycleRoot, cli_env: dict[str, str], tmp_path: Path
) -> None:
    secret = tmp_path / "private.txt"
    secret.write_text("TOPSECRET:x:0:0:a line of a private file\n")
    root.root.mkdir(parents=True)
    root.current_file.symlink_to(secret)
    running = Server(cli_env)
    try:
        status, state = running.get("/health")
    finally:
        assert running.stop() == 0
    assert status == 503 and state["load_error"]["version"] == "CURRENT"
    assert str(root.current_file) in state["error"] and "TOPS" not in json.dumps(state), state


def test_a_body_over_1_mib_is_refused_with_413_unread(root: LifecycleRoot, cli_env: dict[str, str]) -> None:
    running = Server(cli_env)
    try:
        huge = b'{"query": "' + b"x" * (2 << 20) + b'"}'
        status, body = running.post("/search", huge)
        assert status == 413 and body["error"] == "the body is larger than 1048576 bytes"
        assert running.get("/search?q=x&k=0")[0] == 400  # the server still answers
    finally:
        assert running.stop() == 0


def test_a_bind_other_machines_can_reach_is_warned_and_ipv6_is_bracketed() -> None:
    assert exposure_warning("127.0.0.1") is None and exposure_warning("::1") is None
    for address in ("0.0.0.0", "::", "192.0.2.7"):
        assert exposure_warning(address).startswith(f"warning: listening on {address}, which other machines can reach")
    assert url_of("::1", 8765) == "http://[::1]:8765" and url_of("127.0.0.1", 80) == "http://127.0.0.1:80"
