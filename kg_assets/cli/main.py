"""`indexctl` verbs. Read-only verbs call the engine directly; verbs that change artifacts run one Dagster job.

Every failure prints one line on stderr and exits with the code of its error family (see `kg_assets.lib.errors`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from kg_assets.cli.options import knob_options, settings_options
from kg_assets.cli.runs import POOL_WAIT_S
from kg_assets.lib import progress
from kg_assets.lib.errors import ConflictError, Interrupted, KgError, NotFoundError, UsageError, ValidationError
from kg_assets.lib.evaluation import EvalSettings
from kg_assets.lib.lifecycle import (
    CATALOG_FILE,
    FAISS_FILE,
    IDMAP_FILE,
    SCIP_FILE,
    TUNING_FILE,
    LifecycleRoot,
    check_version_id,
    stage_sources,
)
from kg_assets.lib.progressive import FAST_EMBEDDER, check_progressive, full_version_state, version_kind
from kg_assets.lib.settings import check_bounds, from_values, to_values
from kg_assets.lib.static_training import TrainSettings
from kg_assets.lib.tuning import KNOBS
from kg_assets.lib.tuning_run import TuneSettings

EXIT_CODES = """\b
Exit codes: 0 ok, 2 usage error, 3 version or file not found,
4 validation or integrity failure, 5 conflict (lock held, stale
expected CURRENT, version exists), 1 anything unexpected."""


class _Context:
    def __init__(self, root: str | None, verbose: bool, wait: float) -> None:
        self.lifecycle = LifecycleRoot(root)
        self.verbose = verbose
        self.wait = wait

    def build(self, version: str, repo: Path | None, **settings: Any) -> dict[str, Any]:
        from kg_assets.cli.runs import run_build

        return run_build(self.lifecycle.root, version, repo, verbose=self.verbose, **settings)

    def run(self, job: str, config: dict[str, Any], without_instance: Callable[[], Any] | None = None) -> Any:
        """Run `job` through Dagster; when the instance cannot record runs (a full disk), `without_instance`
        (rollback and gc, which must work then) does the same work directly, and a note says so."""
        from kg_assets.cli.runs import InstanceUnavailable, run_op_job

        try:
            return run_op_job(self.lifecycle.root, job, config, verbose=self.verbose, wait=self.wait)
        except InstanceUnavailable as exc:
            if without_instance is None:
                raise
            click.echo(f"note: {exc}; ran {job} without recording a Dagster run", err=True)
            return without_instance()


pass_ctx = click.make_pass_decorator(_Context)


@click.group(epilog=EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--root",
    type=click.Path(file_okay=False),
    help="Lifecycle root (default: $KG_INDEXES_DIR, else $CODEINTEL_INDEXES_DIR, else ./indexes).",
)
@click.option("-v", "--verbose", is_flag=True, help="Show Dagster's run log and tracebacks.")
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=POOL_WAIT_S,
    show_default=True,
    metavar="SECONDS",
    help="How long stage, publish, rollback and gc wait for the busy lifecycle pool before giving up (exit 5).",
)
@click.pass_context
def cli(ctx: click.Context, root: str | None, verbose: bool, wait: float) -> None:
    """Build, stage, publish and roll back versioned code-search indexes."""
    ctx.obj = _Context(root, verbose, wait)


def _parse_pairs(pairs: tuple[str, ...], flag: str) -> dict[str, Path]:
    parsed = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"{flag} expects name=path, got {pair!r}")
        parsed[name.strip()] = Path(path)
    return parsed


@cli.command()
@click.argument("version")
@click.argument("faiss", type=click.Path(path_type=Path))
@click.argument("duckdb", type=click.Path(path_type=Path))
@click.argument("scip", type=click.Path(path_type=Path))
@click.option("--faiss-idmap", type=click.Path(path_type=Path), help="FAISS row to chunk_id map (Parquet).")
@click.option("--tuning", type=click.Path(path_type=Path), help="Runtime tuning profile (tuning.json).")
@click.option("--extra", multiple=True, metavar="NAME=PATH", help="Extra file or directory to copy (repeatable).")
@click.option(
    "--sidecar", multiple=True, metavar="NAME=PATH", help="Legacy form of --faiss-idmap/--tuning (faiss_idmap=P)."
)
@pass_ctx
def stage(
    ctx: _Context,
    version: str,
    faiss: Path,
    duckdb: Path,
    scip: Path,
    faiss_idmap: Path | None,
    tuning: Path | None,
    extra: tuple[str, ...],
    sidecar: tuple[str, ...],
) -> None:
    """Copy FAISS, DuckDB and SCIP artifacts into a new validated version."""
    sidecars = _parse_pairs(sidecar, "--sidecar")
    unknown = set(sidecars) - {"faiss_idmap", "tuning"}
    if unknown:
        raise UsageError(f"unknown --sidecar name(s) {sorted(unknown)}: use faiss_idmap or tuning")
    faiss_idmap = faiss_idmap or sidecars.get("faiss_idmap")
    tuning = tuning or sidecars.get("tuning")
    extras = _parse_pairs(extra, "--extra")
    check_version_id(version)
    sources = stage_sources(faiss, duckdb, scip, faiss_idmap, tuning, extras)
    ctx.lifecycle.check_new_version(version)
    ctx.lifecycle.check_not_staging(version)
    config = {
        "version": version,
        "faiss": str(sources.pop(FAISS_FILE)),
        "duckdb": str(sources.pop(CATALOG_FILE)),
        "scip": str(sources.pop(SCIP_FILE)),
        "faiss_idmap": str(sources.pop(IDMAP_FILE)) if IDMAP_FILE in sources else None,
        "tuning": str(sources.pop(TUNING_FILE)) if TUNING_FILE in sources else None,
        "extras": {name: str(path) for name, path in sources.items()},
    }
    result = ctx.run("stage", config)
    for missing, flag in ((faiss_idmap, "--faiss-idmap"), (tuning, "--tuning")):
        if missing is None:
            click.echo(f"note: no {flag} given; the version has none", err=True)
    attrs = result["attrs"]
    click.echo(
        f"Staged {version} -> {result['path']} ({_size(result['bytes'])}; "
        f"dim {attrs['faiss_dim']}, {attrs['faiss_ntotal']} vectors, {attrs['faiss_factory']})"
    )


def _flip(ctx: _Context, action: str, version: str, expect_current: str | None, force: bool = False) -> None:
    check_version_id(version)
    ctx.lifecycle.check_flip_target(version)
    if expect_current is None:  # compare-and-swap against what this operator saw when the command started
        expect_current = ctx.lifecycle.current() or ""
    elif expect_current.lower() == "none":
        expect_current = ""
    else:
        check_version_id(expect_current)  # `../x` is a usage error, not a stale expectation
    config: dict[str, Any] = {"version": version, "expect_current": expect_current}
    if force:
        config["force"] = True

    def rollback_directly() -> dict[str, Any]:
        return asdict(ctx.lifecycle.rollback(version, expect_current=expect_current or None))

    result = ctx.run(action, config, rollback_directly if action == "rollback" else None)
    before = result["from_version"] or "<none>"
    if not result["changed"]:
        click.echo(f"{version} is already current; nothing changed")
    elif action == "publish":
        click.echo(f"Published {version} (was {before}) -> {ctx.lifecycle.version_dir(version)}")
    else:
        click.echo(f"Rolled back to {version} (was {before})")


_EXPECT_HELP = (
    "Refuse unless CURRENT is this version ('none' for nothing published); default: CURRENT as read at start."
)


@cli.command()
@click.argument("version")
@click.option("--expect-current", metavar="VERSION", help=_EXPECT_HELP)
@click.option("--force", is_flag=True, help="Publish even though the version's last eval failed the gate.")
@pass_ctx
def publish(ctx: _Context, version: str, expect_current: str | None, force: bool) -> None:
    """Make VERSION current (verifies its files against the manifest, and refuses a failed eval gate)."""
    _flip(ctx, "publish", version, expect_current, force)


@cli.command()
@click.argument("version")
@click.option("--expect-current", metavar="VERSION", help=_EXPECT_HELP)
@pass_ctx
def rollback(ctx: _Context, version: str, expect_current: str | None) -> None:
    """Make an earlier complete VERSION current again."""
    _flip(ctx, "rollback", version, expect_current)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def status(ctx: _Context, as_json: bool) -> None:
    """Show the current version and every version with its state, creation time and size."""
    infos = ctx.lifecycle.status()
    current = ctx.lifecycle.current()
    try:
        kind, full = version_kind(ctx.lifecycle, current) if current else (None, None)
    except KgError:  # a current version that cannot be read shows as such in the table below
        kind, full = None, None
    pending = full_version_state(ctx.lifecycle, full) if kind == "fast" and full else None
    if as_json:
        payload = {
            "root": str(ctx.lifecycle.root),
            "current": current,
            "current_kind": kind,
            "full_version": pending,
            "versions": [asdict(i) for i in infos],
        }
        click.echo(json.dumps(payload, indent=2))
    else:
        click.echo(f"current: {current or '<none>'}" + (f" (fast: {pending})" if pending else ""))
        click.echo(f"root: {ctx.lifecycle.root}")
        rows = [("VERSION", "STATE", "CREATED", "SIZE")]
        rows += [(i.version, i.state, i.created, _size(i.size_bytes)) for i in infos]
        for line, info in zip(_table(rows) if infos else ["no versions"], [None, *infos], strict=False):
            note = (info.problem or ("fast" if info.kind == "fast" else None)) if info else None
            click.echo(line + (f"  ({note})" if note else ""))
    ctx.lifecycle.trusted_current()  # a pointer that cannot be trusted fails the command, after the listing


@cli.command(name="ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def list_versions(ctx: _Context, as_json: bool) -> None:
    """List complete versions in natural order (v2 before v10)."""
    versions = ctx.lifecycle.list_versions()
    if as_json:
        click.echo(json.dumps(versions))
    elif versions:
        click.echo("\n".join(versions))
    else:
        click.echo("no versions", err=True)


@cli.command()
@click.option("--keep", type=click.IntRange(min=0), default=5, show_default=True, help="Complete versions to keep.")
@click.option(
    "--staging-max-age",
    type=click.FloatRange(min=0),
    default=24.0,
    show_default=True,
    help="Hours after which an unlocked staging directory counts as abandoned.",
)
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def gc(ctx: _Context, keep: int, staging_max_age: float, dry_run: bool, as_json: bool) -> None:
    """Remove the oldest versions beyond --keep (never current or the one before it) and stale staging dirs."""
    if not ctx.lifecycle.versions_dir.is_dir():
        report = {"removed_versions": [], "removed_staging": [], "kept": [], "removed_derived": [], "in_use": []}
    else:
        config = {"keep": keep, "staging_max_age_hours": staging_max_age, "dry_run": dry_run}
        report = ctx.run(
            "gc",
            config,
            lambda: asdict(ctx.lifecycle.gc(keep, staging_max_age_s=staging_max_age * 3600, dry_run=dry_run)),
        )
    if as_json:
        click.echo(json.dumps({**report, "dry_run": dry_run}, indent=2))
        return
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{verb} versions: {', '.join(report['removed_versions']) or '-'}")
    click.echo(f"{verb} staging: {', '.join(report['removed_staging']) or '-'}")
    if report["removed_derived"]:
        click.echo(f"removed caches and eval records of removed versions: {len(report['removed_derived'])}")
    click.echo(f"kept: {', '.join(report['kept']) or '-'}")
    if report["in_use"]:
        click.echo(f"kept because a reader (a server) holds them: {', '.join(report['in_use'])}")


@cli.command()
@click.argument("version")
@click.option("--repo", type=click.Path(exists=True, file_okay=False, path_type=Path), default=".", show_default=True)
@click.option("--publish", "publish_after", is_flag=True, help="Publish the version when the build succeeds.")
@click.option(
    "--embedder",
    default="minilm",
    show_default=True,
    help="minilm, static (the committed static code model), static:<model dir>, st:<model> or "
    "http://host:port#model#dim",
)
@click.option("--factory", default="auto", show_default=True, help="FAISS factory string, or auto (by corpus size).")
@click.option(
    "--include",
    multiple=True,
    metavar="GLOB",
    help="Index only paths matching GLOB (repeatable); they are indexed even if vendored, minified or generated.",
)
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip paths matching GLOB (repeatable).")
@click.option(
    "--shards",
    type=click.IntRange(0, 1024),
    default=0,
    help="Shards that embed and encode in parallel steps (default 0: 1 below 20k chunks, else by chunks and cores).",
)
@click.option(
    "--work-dir",
    default="",
    metavar="PATH|URL",
    help="Where step outputs go, a path or fsspec URL all workers see (default: versions/<v>.staging/build).",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Re-run only the steps VERSION's failed build run did not finish (one new run, with that run's settings).",
)
@click.option(
    "--progressive",
    is_flag=True,
    help="With --publish: first build and publish VERSION-fast (static embedder, lexical index, definitions; "
    "searchable in seconds), then build VERSION (the transformer and SCIP) and publish it.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@pass_ctx
def build(
    ctx: _Context,
    version: str,
    repo: Path,
    publish_after: bool,
    embedder: str,
    factory: str,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    shards: int,
    work_dir: str,
    resume: bool,
    progressive: bool,
    as_json: bool,
) -> None:
    """Build VERSION from a repository (one Dagster run of the build assets), optionally publishing it.

    Vendored, build and environment directories, lock files, minified and generated code are skipped by default
    (the `chunks` asset lists what and why); GLOBs match repo-relative paths, `*` also matches `/`. --resume
    re-executes the version's failed build run from its failure (a killed shard step, a lost embedding server).
    --progressive publishes VERSION-fast first and VERSION after it, one build run each; if the full build fails,
    VERSION-fast stays published and `indexctl status` says so."""
    from kg_assets.lib.embedding import load_embedder
    from kg_assets.lib.faiss_index import check_factory

    if as_json:
        progress.silence()

    check_version_id(version)
    if resume and ctx.lifecycle.version_dir(version).exists():
        raise ConflictError(f"version {version} is already built and sealed: there is no failed build of it to resume")
    ctx.lifecycle.check_new_version(version)
    ctx.lifecycle.check_not_staging(version)
    fast: str | None = None  # the fast version a progressive build publishes first
    if resume:
        click_ctx = click.get_current_context()
        given = [
            param.opts[0]
            for param in click_ctx.command.params
            if param.name not in ("version", "resume", "as_json")
            and click_ctx.get_parameter_source(param.name) is ParameterSource.COMMANDLINE
        ]
        if given:
            raise UsageError(f"--resume re-runs the failed run with its own settings; drop {', '.join(given)}")
        summary = ctx.build(version, None, resume=True)
    else:
        fast = check_progressive(version, publish_after, embedder) if progressive else None
        if fast is not None:
            ctx.lifecycle.check_new_version(fast)
            ctx.lifecycle.check_not_staging(fast)
        # --publish is a compare-and-swap against CURRENT as the build found it (exit 5 if someone moved it meanwhile)
        seen = ctx.lifecycle.current() or ""
        if not repo.is_dir():
            raise UsageError(f"--repo {repo} is not a directory")
        dim = load_embedder(embedder).dim
        if factory != "auto":
            check_factory(factory, dim)
        if work_dir:  # a location a build may not own, or a protocol fsspec does not know: exit 2 before any run
            from kg_assets.lib.build import check_work_path
            from kg_assets.lib.workdir import is_local, location

            place = location(work_dir)
            if is_local(place) and place.exists() and not place.is_dir():
                raise UsageError(f"--work-dir {place} is not a directory")
            for built in filter(None, (fast, version)):
                check_work_path(ctx.lifecycle, repo.absolute(), built, place / built)
        settings = {
            "factory": factory,
            "publish": publish_after,
            "include": list(include),
            "exclude": list(exclude),
            "shards": shards,
            "work_dir": work_dir,
        }
        if fast is not None:
            summary = ctx.build(
                fast,
                repo.absolute(),
                embedder=FAST_EMBEDDER,
                expect_current=seen,
                kind="fast",
                full_version=version,
                **settings,
            )
            _print_build(summary, as_json, lines=True)
            if not as_json:
                click.echo(f"{fast} answers searches now; building {version} ({embedder}, SCIP) to publish after it")
            seen = fast
        try:
            summary = ctx.build(
                version, repo.absolute(), embedder=embedder, expect_current=seen if publish_after else None, **settings
            )
        except KgError as exc:
            if fast is None:
                raise
            raise type(exc)(f"{exc} ({fast} stays published)") from exc
    _print_build(summary, as_json, lines=fast is not None)


def _print_build(summary: dict[str, Any], as_json: bool, *, lines: bool = False) -> None:
    """What `build` prints of one build run's summary; `lines`: JSON on one line (a progressive build prints
    one line per version, each as soon as it is published)."""
    version = summary["version"]
    if as_json:
        click.echo(json.dumps(summary) if lines else json.dumps(summary, indent=2))
        return
    attrs = summary["attrs"]
    click.echo(f"Built {version} -> {summary['path']}")
    if attrs.get("kind") == "fast":
        click.echo(f"  fast version: static embedder, no SCIP; the full version {attrs.get('full_version')} follows")
    click.echo(
        f"  {summary['chunks']} chunks from {summary['files']} files; dim {attrs['faiss_dim']}; "
        f"factory {attrs['faiss_factory']}; {_size(summary['bytes'])}"
    )
    click.echo("  languages: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["languages"].items())))
    if summary["skipped"]:
        click.echo("  skipped: " + ", ".join(f"{k} {v['count']}" for k, v in sorted(summary["skipped"].items())))
    if summary["line_window_fallback"]:
        click.echo("  no grammar loaded (line windows): " + ", ".join(summary["line_window_fallback"]))
    click.echo(
        f"  embedded {summary['embedded']}, reused {summary['reused']} from earlier versions "
        f"({summary['shards']} shard{'s' if summary['shards'] != 1 else ''})"
    )
    click.echo("  seconds per stage: " + ", ".join(f"{k} {v:.1f}" for k, v in summary["seconds"].items()))
    if summary["published_from"] is not None:  # --publish, or the resumed run's own --publish
        click.echo(f"Published {version} (was {summary['published_from']})")


@cli.command()
@click.argument("text")
@click.option("-k", "k", type=int, default=10, show_default=True, help="Number of hits (1-1000).")
@click.option(
    "--mode",
    default="hybrid",
    show_default=True,
    help="hybrid (dense + lexical + symbol, re-ranked), dense, lexical or symbol.",
)
@click.option("--version", "version", help="Search this version instead of the current one.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print JSON (each hit with its channels and the terms of its score)."
)
@click.option("--explain", is_flag=True, help="Under each hit, the terms its score sums: channels, priors, boosts.")
@pass_ctx
def search(ctx: _Context, text: str, k: int, mode: str, version: str | None, as_json: bool, explain: bool) -> None:
    """Search the published (or given) version for TEXT."""
    from kg_assets.lib.search import search_version

    found_version, hits, notes = search_version(ctx.lifecycle, text, k, version, mode)
    for note in notes:
        click.echo(f"note: {note}", err=True)
    if as_json:
        payload = {"version": found_version, "mode": mode, "hits": [h.to_json() for h in hits]}
        click.echo(json.dumps(payload, indent=2))
        return
    for hit in hits:
        where = _printable(f"{hit.uri}:{hit.start_line}-{hit.end_line}")
        click.echo(f"{hit.rank:>3}  {hit.score:.3f}  {where}  {_printable(hit.first_line[:80])}")
        if explain:
            for term in hit.explain or [{"term": f"{mode} score", "value": hit.score}]:
                factor = f" (x{term['factor']:.3g})" if "factor" in term else ""
                click.echo(f"{'':>5}{term['value']:+.3f}  {term['term']}{factor}")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="Port (0: any free).")
@pass_ctx
def serve(ctx: _Context, host: str, port: int) -> None:
    """Serve the current version over HTTP (/search, /health, /chunks/ID), following publish and rollback."""
    from kg_assets.serve.http_server import serve as serve_http

    serve_http(ctx.lifecycle, host, port)


@cli.command()
@pass_ctx
def mcp(ctx: _Context) -> None:
    """Serve the current version to an MCP client on stdio (search_code, get_chunk, find_symbol)."""
    from kg_assets.serve.mcp_server import serve_stdio

    serve_stdio(ctx.lifecycle)


def _printable(text: str) -> str:
    """`text` with control characters escaped, so a file name or line cannot break or spoof an output line."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


@cli.command(name="export-idmap")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Parquet file to write.")
@click.option("--duckdb", "duckdb_path", type=click.Path(dir_okay=False, path_type=Path), help="Catalog to refresh.")
@click.option("--index", "index_path", type=click.Path(dir_okay=False, path_type=Path), help="FAISS index to export.")
@pass_ctx
def export_idmap(ctx: _Context, out: Path, duckdb_path: Path | None, index_path: Path | None) -> None:
    """Export a FAISS index's row -> chunk_id map; with --duckdb also refresh that catalog's join.

    The index is --index, else $FAISS_INDEX, else the current version's faiss.index.
    """
    if index_path is None:
        env_index = os.environ.get("FAISS_INDEX")
        if env_index:
            index_path = Path(env_index)
        else:
            index_path = ctx.lifecycle.version_dir(ctx.lifecycle.resolve_version(None)) / FAISS_FILE
    if not index_path.is_file():
        raise NotFoundError(f"FAISS index not found: {index_path}")
    config = {"index": str(index_path.absolute()), "out": str(out.absolute())}
    if duckdb_path is not None:
        config["duckdb"] = str(duckdb_path.absolute())
    result = ctx.run("faiss_join_refresh", config)
    click.echo(f"Exported {result['exported_rows']} FAISS rows -> {out}")
    if duckdb_path is not None:
        _print_refresh(result)


@cli.command(name="materialize-join")
@click.argument("idmap", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--duckdb", "duckdb_path", type=click.Path(dir_okay=False, path_type=Path), required=True)
@pass_ctx
def materialize_join(ctx: _Context, idmap: Path, duckdb_path: Path) -> None:
    """Refresh faiss_idmap_mat, faiss_idmap and v_faiss_join in a catalog from IDMAP (only if it changed)."""
    for path in (idmap, duckdb_path):
        if not path.is_file():
            raise NotFoundError(f"not found: {path}")
    result = ctx.run("faiss_join_refresh", {"idmap": str(idmap.absolute()), "duckdb": str(duckdb_path.absolute())})
    _print_refresh(result)


def _print_refresh(result: dict[str, Any]) -> None:
    click.echo(f"Refreshed={result['refreshed']} rows={result['rows']} checksum={result['checksum']}")


@cli.command()
@click.option("--quick", is_flag=True, help="Quick sweep (about 200 self-queries, bisection). The default.")
@click.option("--full", is_flag=True, help="Full sweep (about 1000 self-queries, whole grid, frontier re-timed).")
@knob_options
@click.option("--version", "version", help="Tune this complete version instead of the current one.")
@settings_options(TuneSettings, skip=("mode",))
@click.option("--no-docstring-queries", "no_docstring_queries", is_flag=True, hidden=True)  # the old spelling
@click.option("--json", "as_json", is_flag=True, help="Print the profile as JSON.")
@pass_ctx
def tune(
    ctx: _Context,
    quick: bool,
    full: bool,
    version: str | None,
    no_docstring_queries: bool,
    as_json: bool,
    **values: Any,
) -> None:
    """Sweep the runtime knobs against exact search and write tuning.json, or persist manual overrides."""
    if as_json:
        progress.silence()
    knobs = {name: values.pop(name) for name in KNOBS}
    overrides = {name: value for name, value in knobs.items() if value is not None}
    if quick and full:
        raise UsageError("choose one of --quick and --full")
    if overrides and (quick or full):
        raise UsageError("a sweep (--quick/--full) and manual overrides cannot be combined; run them separately")
    mode = "overrides" if overrides else ("full" if full else "quick")
    settings = from_values(TuneSettings, {**values, "mode": mode})
    if no_docstring_queries:
        settings = dataclasses.replace(settings, generated_queries=False)
    if settings.target_recall <= 0:
        raise UsageError("--target-recall must be in (0, 1]")
    _check_queries(settings.queries_file)
    version = ctx.lifecycle.resolve_version(version)
    target_recall, k = settings.target_recall, settings.k
    config = {**to_values(settings), **overrides}
    from kg_assets.cli.runs import run_job

    run_job(
        ctx.lifecycle.root,
        "tune",
        {"ops": {"tuning_profile": {"config": config}}},
        partition_key=version,
        verbose=ctx.verbose,
    )
    from kg_assets.lib.tuning_run import active_profile

    report = active_profile(ctx.lifecycle, version)
    vdir = ctx.lifecycle.version_dir(version)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    elif overrides:
        click.echo(f"Saved overrides {report['overrides']} -> {vdir / 'tuning.json'}")
        click.echo(f"Wrote runtime tuning snapshot -> {vdir / 'faiss.index.audit.json'}")
    else:
        _print_profile(report)
        click.echo(f"Saved tuning profile -> {vdir / 'tuning.json'}")
        if report["recall_at_k"] is not None and report["recall_at_k"] < target_recall:
            click.echo(f"warning: no point reached recall@{k} {target_recall}; kept the most accurate one", err=True)


def _check_queries(path: Path | None) -> None:
    """A `--queries` file that does not exist or is not a regular file (a FIFO would block the run) fails before
    any run starts."""
    if path is not None:
        from kg_assets.lib.query_sets import check_queries_file

        check_queries_file(path)


@cli.group()
def embedder() -> None:
    """The static code embedder: train it with the `embedder` Dagster job."""


@embedder.command(name="train")
@settings_options(TrainSettings)
@click.option("--json", "as_json", is_flag=True, help="Print the model's provenance as JSON.")
@pass_ctx
def embedder_train(ctx: _Context, as_json: bool, **values: Any) -> None:
    """Train the static code model (one run of the `embedder` asset group) and write its directory."""
    if as_json:
        progress.silence()
    settings = from_values(TrainSettings, values)
    check_bounds(settings)
    from kg_assets.cli.runs import run_embedder_training
    from kg_assets.lib import code_corpus

    code_corpus.check_manifest(code_corpus.load_manifest(settings.manifest))  # refused before any run starts

    provenance = run_embedder_training(ctx.lifecycle.root, to_values(settings), verbose=ctx.verbose)
    if as_json:
        click.echo(json.dumps(provenance, indent=2))
        return
    evaluation, corpus = provenance["evaluation"], provenance["corpus"]
    click.echo(
        f"Wrote {settings.out} ({_size(provenance['bytes'])}): {corpus['chunks']} chunks of {corpus['sources']} "
        f"packages, dim {provenance['settings']['dim']}, ridge {provenance['settings']['ridge']:g}"
    )
    rows = [("model", "MRR@10", "recall@10")]
    rows += [
        (name, evaluation[name]["mrr_at_10"], evaluation[name]["recall_at_10"])
        for name in ("minilm", "distilled", "static")
    ]
    click.echo(f"{evaluation['set']}:")
    for line in _table(rows):
        click.echo(f"  {line}")


@cli.command(name="show-profile")
@click.option("--version", "version", help="Show this version instead of the current one.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def show_profile(ctx: _Context, version: str | None, as_json: bool) -> None:
    """Show the active runtime knobs, overrides and the profile's measured recall and latency."""
    from kg_assets.lib.tuning_run import active_profile

    report = active_profile(ctx.lifecycle, version)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        _print_profile(report)


@cli.command(name="eval")
@click.option("--version", "version", help="Evaluate this complete version instead of the current one.")
@settings_options(EvalSettings)
@click.option("--no-docstring-queries", "no_docstring_queries", is_flag=True, hidden=True)  # tune's old spelling
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@pass_ctx
def evaluate(ctx: _Context, version: str | None, no_docstring_queries: bool, as_json: bool, **values: Any) -> None:
    """Compare the ANN index with exact search and other channels; write pool.parquet and metrics.json.

    Output: <out-dir>/<version>/<run>/ (and <version>/latest); views v_faiss_pool and v_pool_coverage in --duckdb
    (default <out-dir>/analytics.duckdb). The gate (ANN recall floor, MRR drop) decides whether publish accepts it.
    """
    if as_json:
        progress.silence()
    settings = from_values(EvalSettings, values)
    if no_docstring_queries:
        settings = dataclasses.replace(settings, generated_queries=False)
    _check_queries(settings.queries_file)
    version = ctx.lifecycle.resolve_version(version)
    config = to_values(settings)
    from kg_assets.cli.runs import run_job

    result = run_job(
        ctx.lifecycle.root,
        "eval",
        {"ops": {"evaluation": {"config": config}}},
        partition_key=version,
        verbose=ctx.verbose,
    )
    (event,) = result.asset_materializations_for_node("evaluation")[1:]  # eval_pool, then eval_metrics
    metrics = json.loads(Path(event.metadata["path"].value).read_text(encoding="utf-8"))  # this run's own
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
    else:
        _print_eval(metrics)
    gate = metrics["gate"]
    if not gate["passed"]:
        failures = "; ".join(gate["failures"])
        click.echo(
            f"warning: the eval gate failed ({failures}); publish will refuse {version} unless --force", err=True
        )


def _print_eval(metrics: dict[str, Any]) -> None:
    from kg_assets.lib.evaluation import channel_rows

    k, ann, params, outputs = metrics["k"], metrics["ann"], metrics["params"], metrics["outputs"]
    sets = ", ".join(f"{name} {info['queries']}" for name, info in metrics["query_sets"].items())
    click.echo(f"Evaluated {metrics['version']} (run {metrics['run_id']}, {metrics['seconds']:.1f}s): {sets} queries")
    click.echo(f"  k {k}, factory {params['factory']}, faiss ran with {_knobs(params['active'])}")
    if metrics["gate"]["measured_overrides"]:
        served = _knobs(params["profile"]["served"])
        click.echo(f"  note: not what search serves ({served}): {json.dumps(metrics['gate']['measured_overrides'])}")
    for note in metrics["notes"]:
        click.echo(f"  note: {note}")
    per_query = ann["per_query"]
    click.echo(
        f"ANN recall@{k} vs flat: {ann['recall_at_k']:.4f} (tie-tolerant {ann['tie_recall_at_k']:.4f}; "
        f"per query min {per_query['min']:.3f}, p10 {per_query['p10']:.3f}, median {per_query['p50']:.3f})"
    )
    click.echo(f"labelled queries: {metrics['labelled_queries']}")
    rows: list[tuple[Any, ...]] = [("CHANNEL", f"RECALL@{k}", f"MRR@{k}", f"NDCG@{k}", "MS/QUERY")]
    rows += [(channel, *map(_metric, figures), latency) for channel, *figures, latency in channel_rows(metrics)]
    for line in _table(rows):
        click.echo("  " + line)
    for name, info in metrics["sets"].items():
        if info.get("categories"):
            click.echo(f"NDCG@{k} of {name} queries by category:")
            channels = list(next(iter(info["categories"].values())))
            table: list[tuple[Any, ...]] = [("CATEGORY", *(c.upper() for c in channels))]
            for category, figures in info["categories"].items():
                table.append((category, *(_metric(figures.get(c, {}).get("ndcg_at_k", "-")) for c in channels)))
            for line in _table(table):
                click.echo("  " + line)
    for channel, reason in metrics["channels_unavailable"].items():
        click.echo(f"  {channel}: not available ({reason})")
    if metrics["delta"]:
        changes = ", ".join(f"{key} {value:+.4f}" for key, value in metrics["delta"].items() if value)
        click.echo(f"vs {metrics['baseline']['version']} ({metrics['baseline']['run_id']}): {changes or 'no change'}")
    gate = metrics["gate"]
    click.echo("gate: " + ("passed" if gate["passed"] else "FAILED: " + "; ".join(gate["failures"])))
    click.echo(f"pool    -> {outputs['pool']} ({outputs['pool_rows']} rows)")
    click.echo(f"metrics -> {outputs['metrics']}")
    click.echo(f"views   -> v_faiss_pool, v_pool_coverage in {outputs['duckdb']}")


@cli.command()
@click.option("--version", "version", help="Check this version instead of the current one.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def health(ctx: _Context, version: str | None, as_json: bool) -> None:
    """Check the current (or given) version: files against the manifest's sha256; index, ID map, catalog,
    views, tuning profile and the current pointer in agreement. Exit 4 when any check fails."""
    from kg_assets.lib.health import version_health

    report = version_health(ctx.lifecycle, version)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        role = " (current)" if report.version == report.current else ""
        click.echo(f"version: {report.version}{role}  root: {report.root}")
        for line in _table([(c.status.upper(), c.name, c.detail) for c in report.checks]):
            click.echo(f"  {line}")
    if not report.ok:
        failed = ", ".join(c.name for c in report.failures())
        raise ValidationError(f"version {report.version} is unhealthy: {failed} failed")


@cli.command()
@click.argument("old")
@click.argument("new")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def diff(ctx: _Context, old: str, new: str, as_json: bool) -> None:
    """Compare version OLD with NEW: chunk and file churn, factory and size, tuning point, latest eval."""
    from kg_assets.lib.version_diff import diff_versions

    result = diff_versions(ctx.lifecycle, old, new)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        _print_diff(result)


def _print_diff(result: dict[str, Any], listed: int = 20) -> None:
    sides = [result["old"], result["new"]]
    tunings = [side["tuning"] or {} for side in sides]
    evals = [side["eval"] or {} for side in sides]
    rows = [("", *(side["version"] for side in sides))]
    for label, key in (("created", "created"), ("factory", "factory"), ("dimension", "dim"), ("vectors", "ntotal")):
        rows.append((label, *(side[key] for side in sides)))
    rows.append(("size", *(_size(side["bytes"]) for side in sides)))
    rows.append(("embedder", *(side["embedder"] for side in sides)))
    rows.append(("tuning", *(_knobs(t["active"]) if t else "no tuning.json" for t in tunings)))
    rows.append(("  recall@k", *(t.get("recall_at_k") and f"{t['recall_at_k']} (k={t['k']})" for t in tunings)))
    rows.append(("  ms/query", *(t.get("latency_ms") for t in tunings)))
    rows.append(("eval", *(f"{e['run_id']} ({e['at']})" if e else "no eval" for e in evals)))
    rows.append(("  gate", *(("passed" if e["gate"]["passed"] else "FAILED") if e else None for e in evals)))
    metrics = sorted({key for e in evals for key in e.get("summary", {})})
    rows += [(f"  {key}", *(_metric(e.get("summary", {}).get(key)) for e in evals)) for key in metrics]
    for line in _table(rows):
        click.echo(line)
    chunks, files = result["chunks"], result["files"]
    click.echo(
        f"chunks: {chunks['old']} -> {chunks['new']}: +{chunks['added']} added, -{chunks['removed']} removed, "
        f"~{chunks['changed']} changed, {chunks['unchanged']} unchanged; {chunks['new_texts']} with new content"
    )
    click.echo(
        f"files: +{len(files['added'])} added, -{len(files['removed'])} removed, ~{len(files['changed'])} changed, "
        f"{files['unchanged']} unchanged"
    )
    for mark, key in (("+", "added"), ("-", "removed"), ("~", "changed")):
        for uri in files[key][:listed]:
            click.echo(f"  {mark} {_printable(uri)}")
        if len(files[key]) > listed:
            click.echo(f"  {mark} ... {len(files[key]) - listed} more (--json lists them all)")
    if result["same_embedder"] is False:
        click.echo("note: the versions were embedded differently; their vectors and scores are not comparable")


def _knobs(active: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in active.items()) or "none (exact search)"


def _metric(value: Any) -> Any:
    return f"{value:.4f}" if isinstance(value, float) else value


def _table(rows: list[tuple[Any, ...]]) -> list[str]:
    """Rows as left-aligned columns (None shown as '-'), trailing spaces stripped."""
    cells = [["-" if cell is None else _printable(str(cell)) for cell in row] for row in rows]
    widths = [max(len(row[col]) for row in cells) for col in range(len(cells[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in cells]


def _print_profile(report: dict[str, Any]) -> None:
    click.echo(f"version: {report['version']}  factory: {report['factory']}")
    click.echo(f"active: {_knobs(report['active'])}")
    click.echo(f"overrides: {json.dumps(report['overrides'])}")
    click.echo(f"param_str: {report['param_str'] or '-'}")
    if report["recall_at_k"] is not None:
        click.echo(
            f"measured: recall@{report['k']} {report['recall_at_k']}, {report['latency_ms']} ms/query, "
            f"{report['qps']:,.0f} QPS (queries: {json.dumps(report['queries'])}, at {report['profile_at']})"
        )
    elif not report["has_profile"]:
        click.echo("no tuning.json: the index runs with the knobs it was built with (indexctl tune --quick)")


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _one_line(exc: BaseException) -> str:
    """The first line of an error's message, control characters escaped."""
    lines = str(exc).strip().splitlines()
    return _printable(lines[0]) if lines else type(exc).__name__


_signalled: list[str] = []  # the signal that interrupted this process, once one has


def _interrupt(signum: int, frame: object) -> None:
    """SIGINT and SIGTERM: remember which, then interrupt as SIGINT does. A Dagster step turns the
    KeyboardInterrupt into a failed run, so `main` exits 130 by what was received, not by what came back."""
    _signalled.append(signal.Signals(signum).name)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the CLI and turn errors into one line and an exit code (SIGTERM ends it as
    SIGINT does: exit 130, whatever the interrupted run reported)."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        cli.main(args=argv, prog_name="indexctl", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt, Exception) as exc:
        if _signalled or isinstance(exc, click.exceptions.Abort | KeyboardInterrupt | Interrupted):
            cause = _signalled[0] if _signalled else _one_line(exc) if isinstance(exc, Interrupted) else "SIGINT"
            click.echo(f"indexctl: interrupted ({cause})", err=True)
            sys.exit(Interrupted.exit_code)
        code, line = _failure(exc)
        click.echo(line, err=True)
        sys.exit(code)


def _failure(exc: Exception) -> tuple[int, str]:
    """The exit code and the one line a failure prints."""
    if isinstance(exc, click.UsageError):
        command = exc.ctx.command_path if exc.ctx else "indexctl"
        return exc.exit_code, f"indexctl: error: {exc.format_message()} (see '{command} --help')"
    if isinstance(exc, click.ClickException):
        return exc.exit_code, f"indexctl: error: {exc.format_message()}"
    if isinstance(exc, KgError):
        return exc.exit_code, f"indexctl: error: {_one_line(exc)}"
    if os.environ.get("KG_DEBUG") or "-v" in sys.argv or "--verbose" in sys.argv:
        traceback.print_exception(exc)
    return 1, f"indexctl: unexpected error: {type(exc).__name__}: {_one_line(exc)} (see -v)"


if __name__ == "__main__":
    main()
