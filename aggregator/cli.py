"""The command line: each command opens the workspace, calls one pipeline function,
and turns errors into a one-line message and an exit code.

Exit codes: 0 success; 1 done, but some sources or files failed; 2 bad usage or
bad config (nothing written).
"""

from __future__ import annotations

import faulthandler
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import click

from aggregator import __version__
from aggregator.config import config_path, format_duration, load_config
from aggregator.errors import AggregatorError, ConfigError, LockedError
from aggregator.model import Config, SourceReport

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE = 0, 1, 2
log = logging.getLogger("aggregator")


def utc_now() -> datetime:
    return datetime.now(UTC)


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    click.echo(f"aggregator: {message}", err=True)
    sys.exit(code)


class Context:
    def __init__(self, config_file: str | None, verbose: int, quiet: bool) -> None:
        self.config_file = config_path(config_file)
        self.verbose = verbose
        self.quiet = quiet
        self._config: Config | None = None

    def config(self) -> Config:
        # Read once per command: a 1,000-source feeds.yaml takes ~0.4 s to parse.
        if self._config is None:
            try:
                self._config = load_config(self.config_file)
            except ConfigError as e:
                fail(str(e))
        return self._config


@contextmanager
def errors_to_exit() -> Iterator[None]:
    try:
        yield
    except ConfigError as e:
        fail(str(e), EXIT_USAGE)
    except LockedError as e:
        fail(str(e), EXIT_USAGE)
    except AggregatorError as e:
        fail(str(e), EXIT_PARTIAL)


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else (logging.DEBUG if verbose > 1 else
                                         logging.INFO if verbose else logging.WARNING)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                           "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("apscheduler", "urllib3", "waitress"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_file", metavar="FILE", envvar="AGGREGATOR_CONFIG",
              help="The config file (default ./feeds.yaml; env AGGREGATOR_CONFIG).")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
@click.version_option(__version__, prog_name="aggregator")
@click.pass_context
def main(ctx: click.Context, config_file: str | None, verbose: int, quiet: bool) -> None:
    """Poll RSS, Atom and JSON feeds into a Hugo-ready Markdown store and
    republish them as per-tag, per-category and per-source feeds."""
    # A crash in a C extension (lxml, SQLite, nh3) then names the Python lines of every
    # thread on stderr (the journal, under systemd) instead of dying without a word.
    faulthandler.enable()
    _setup_logging(verbose, quiet)
    ctx.obj = Context(config_file, verbose, quiet)


def _open(ctx: Context):  # noqa: ANN202
    from aggregator.workspace import Workspace

    return Workspace(ctx.config())


# -- poll ---------------------------------------------------------------------------------
def _report_line(r: SourceReport) -> str:
    if r.status in ("error", "skipped"):  # the error field says why
        return f"{r.status:<12} {r.id:<20} {r.error}"
    return f"{r.status:<12} {r.id:<20} new {r.new:<4} updated {r.updated:<4} ({r.seconds:.1f}s)"


@contextmanager
def _progress(total: int, enabled: bool, label: str) -> Iterator[Callable[[str], None]]:
    """A progress bar on a terminal; lines printed above it stay."""
    if not enabled or total == 0:
        yield lambda line: click.echo(line, err=True)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task(label, total=total)

        def advance(line: str) -> None:
            if line:
                console.print(line, markup=False, highlight=False)
            bar.advance(task)

        yield advance


def _quiet_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """-q after the command too (aggregator poll -q), as well as before it."""

    def set_quiet(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value:
            ctx.find_object(Context).quiet = True  # type: ignore[union-attr]
            logging.getLogger().setLevel(logging.ERROR)

    return click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=set_quiet,
                        help="Print nothing but errors.")(f)


def _summary_table(reports: list[SourceReport]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for col, justify in (("source", "left"), ("status", "left"), ("new", "right"),
                         ("updated", "right"), ("seconds", "right"), ("note", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    styles = {"ok": "green", "not_modified": "dim", "error": "red", "skipped": "yellow"}
    for r in reports:
        table.add_row(r.id, f"[{styles[r.status]}]{r.status}[/]", str(r.new), str(r.updated),
                      f"{r.seconds:.1f}", r.error or r.warning or "")
    Console(stderr=True).print(table)


@main.command()
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@click.option("--force", is_flag=True,
              help="Poll even sources that are backing off or waiting out Retry-After.")
@_quiet_option
@click.pass_obj
def poll(ctx: Context, ids: tuple[str, ...], as_json: bool, force: bool) -> None:
    """Poll every enabled source (or the given ones) once, now."""
    from aggregator.pipeline import poll as run_poll
    from aggregator.pipeline import select_sources

    config = ctx.config()
    try:
        sources = select_sources(config, ids)  # before anything is created on disk
    except AggregatorError as e:
        fail(str(e), EXIT_USAGE)
    with errors_to_exit(), _open(ctx) as ws:
        show = not ctx.quiet and not as_json
        terminal = show and sys.stderr.isatty()
        with _progress(len(sources), terminal, "polling") as emit:
            def on_report(r: SourceReport) -> None:
                emit("" if terminal else _report_line(r))

            reports = run_poll(ws, sources, utc_now, force=force,
                               on_report=on_report if show else None)
        from aggregator.metrics import record_polls

        record_polls(ws.index, reports, utc_now())  # one write for the whole round
        if terminal:
            _summary_table(reports)
    new = sum(r.new for r in reports)
    updated = sum(r.updated for r in reports)
    errors = sum(r.status == "error" for r in reports)
    if as_json:
        click.echo(json.dumps({
            "sources": [{"id": r.id, "status": r.status, "new": r.new, "updated": r.updated,
                         "error": r.error if r.status in ("error", "skipped") else None}
                        for r in reports],
            "new": new, "updated": updated, "errors": errors,
        }, ensure_ascii=False, indent=2))
    elif not ctx.quiet:
        click.echo(f"{len(reports)} sources: {new} new, {updated} updated, {errors} errors",
                   err=True)
    sys.exit(EXIT_PARTIAL if errors else EXIT_OK)


# -- publish ------------------------------------------------------------------------------
@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@click.option("--no-hook", is_flag=True, hidden=True,
              help="Do not run after_publish (the daemon runs it on a thread of its own).")
@_quiet_option
@click.pass_obj
def publish(ctx: Context, as_json: bool, no_hook: bool) -> None:
    """Write every feed (RSS, Atom, JSON Feed), index.html and feeds.opml to the output."""
    import time

    from aggregator.metrics import record_publish
    from aggregator.publish import publish as run_publish

    with errors_to_exit(), _open(ctx) as ws:
        started = time.monotonic()
        try:
            result = run_publish(ws)
        except AggregatorError as e:
            record_publish(ws.index, time.monotonic() - started, utc_now(), ok=False,
                           error=str(e))
            raise
        record_publish(ws.index, time.monotonic() - started, utc_now(), ok=not result.failed,
                       written=result.written, removed=result.removed,
                       error=f"{len(result.failed)} feeds could not be built"
                       if result.failed else None)
    output = ws.config.output_dir.resolve()
    changed = [str(output.joinpath(*p.split("/"))) for p in result.changed_paths]
    if changed and not no_hook and ws.config.after_publish:
        from aggregator.hook import run_hook

        run_hook(ws.config, changed)  # a failure is logged; the exit code stays the publish's
    for problem in result.broken:
        click.echo(f"skipped broken store file {problem}", err=True)
    for failure in result.failed:
        click.echo(f"could not build feed {failure}", err=True)
    if as_json:
        click.echo(json.dumps({"feeds": result.feeds, "written": result.written,
                               "unchanged": result.unchanged, "removed": result.removed,
                               "items": result.items, "broken": [str(b) for b in result.broken],
                               "failed": result.failed, "changed": changed,
                               "output": str(ws.config.output_dir)},
                              ensure_ascii=False, indent=2))
    elif not ctx.quiet:
        click.echo(f"{result.feeds} feeds from {result.items} items: {result.written} files "
                   f"written, {result.unchanged} unchanged, {result.removed} removed "
                   f"-> {ws.config.output_dir}", err=True)
    sys.exit(EXIT_PARTIAL if result.broken or result.failed else EXIT_OK)


# -- serve and daemon -----------------------------------------------------------------------
def _metrics_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--metrics-per-source", is_flag=True,
                        help="Also label /metrics by source id (one series per source).")(f)


def _bind(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host or int(port) > 65535:
        raise click.BadParameter(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


@main.command()
@click.option("--bind", default="127.0.0.1:8000", show_default=True, metavar="HOST:PORT",
              help="Where to listen.")
@_metrics_option
@click.pass_obj
def serve(ctx: Context, bind: str, metrics_per_source: bool) -> None:
    """Serve the output directory over HTTP (ETag, gzip, 304s) for feed readers, with
    /metrics (Prometheus) and /healthz."""
    from aggregator.index import Index
    from aggregator.monitor import Monitor
    from aggregator.serve import run_server

    host, port = _bind(bind)
    config = ctx.config()
    config.output_dir.mkdir(parents=True, exist_ok=True)
    with errors_to_exit():
        monitor = Monitor(lambda: config, Index(config.store_dir / ".aggregator" / "index.sqlite"),
                          per_source=metrics_per_source)
        try:
            run_server(config.output_dir, host, port, routes=monitor.answer,
                       ready=lambda h, p: click.echo(
                f"serving {config.output_dir} on http://{h}:{p}/", err=True))
        except KeyboardInterrupt:
            pass


@main.command()
@click.option("--serve", "with_server", is_flag=True, help="Also serve the output directory.")
@click.option("--bind", default="127.0.0.1:8000", show_default=True, metavar="HOST:PORT",
              help="Where --serve listens.")
@click.option("--workers", default=8, show_default=True, help="Sources polled at once.")
@_metrics_option
@click.pass_obj
def daemon(ctx: Context, with_server: bool, bind: str, workers: int,
           metrics_per_source: bool) -> None:
    """Poll every source at its interval, publish after changes; runs until SIGTERM."""
    from aggregator.daemon import run_daemon

    address = _bind(bind) if with_server else None
    ctx.config()  # a bad config is exit 2 before anything starts
    with errors_to_exit():
        run_daemon(ctx.config_file, serve_at=address, workers=workers,
                   metrics_per_source=metrics_per_source)


# -- sources, check, reindex ----------------------------------------------------------------
@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def sources(ctx: Context, as_json: bool) -> None:
    """Each source's last poll, status, errors, next poll and items in the store."""
    from aggregator.schedule import AUTO_ITEMS, interval_choice, next_poll_at, skip_reason

    now = utc_now()
    with errors_to_exit(), _open(ctx) as ws:
        states = ws.index.all_source_states()
        rows: list[dict[str, Any]] = []
        for source in ws.config.sources:
            from aggregator.index import SourceState

            state = states.get(source.id, SourceState())
            dates = (ws.index.source_item_times(source.id, AUTO_ITEMS)
                     if source.interval_auto else ())
            chosen = interval_choice(source, state, dates)
            rows.append({
                "id": source.id, "url": source.url, "enabled": source.enabled,
                "title": source.title or state.title,
                "last_poll": state.last_poll, "status": state.last_status,
                "error": state.last_error, "error_count": state.error_count,
                "next_poll": next_poll_at(source, state, now, dates=dates).isoformat(
                    timespec="seconds") if source.enabled else None,
                "interval": format_duration(chosen.interval),
                "interval_seconds": int(chosen.interval.total_seconds()),
                "interval_reason": chosen.reason,
                "waiting": skip_reason(source, state, now),
                "items": ws.index.count_items(source.id),
            })
    if as_json:
        click.echo(json.dumps({"sources": rows}, ensure_ascii=False, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for col in ("id", "status", "last poll", "errors", "next poll", "every", "why", "items",
                "note"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["id"], r["status"] or "never", _short(r["last_poll"]),
                      str(r["error_count"]), _short(r["next_poll"]) if r["enabled"] else "disabled",
                      r["interval"], r["interval_reason"], str(r["items"]),
                      r["waiting"] or r["error"] or "")
    Console(width=200 if not sys.stdout.isatty() else None).print(table)


def _short(stamp: str | None) -> str:
    return stamp.replace("T", " ")[:16] if stamp else "-"


@main.command()
@click.pass_obj
def check(ctx: Context) -> None:
    """Validate the config and read every store file; report what is broken."""
    from aggregator.pipeline import check_store

    config = ctx.config()
    click.echo(f"{ctx.config_file}: ok ({len(config.sources)} sources)", err=True)
    with errors_to_exit(), _open(ctx) as ws:
        good, problems = check_store(ws)
    for problem in problems:
        click.echo(f"{config.store_dir / problem.path}: {problem.detail}", err=True)
    click.echo(f"{config.store_dir}: {good} files ok, {len(problems)} broken", err=True)
    sys.exit(EXIT_PARTIAL if problems else EXIT_OK)


@main.command()
@click.pass_obj
def reindex(ctx: Context) -> None:
    """Rebuild store/.aggregator/ from the files (keeps HTTP state and deletions)."""
    from aggregator.pipeline import reindex as run_reindex

    with errors_to_exit(), _open(ctx) as ws:
        count, problems = run_reindex(ws)
    for problem in problems:
        click.echo(f"skipped broken store file {problem}", err=True)
    click.echo(f"reindexed {count} files", err=True)
    sys.exit(EXIT_PARTIAL if problems else EXIT_OK)


# -- ecosystem: add, OPML -----------------------------------------------------------------
@main.command()
@click.argument("url")
@click.option("--id", "source_id", help="The new source's id (default: from the feed's title).")
@click.option("--title", help="Title to show (default: the feed's own).")
@click.option("--tags", default="", help="Comma-separated tags for every item.")
@click.option("--categories", default="", help="Comma-separated categories.")
@click.pass_obj
def add(ctx: Context, url: str, source_id: str | None, title: str | None, tags: str,
        categories: str) -> None:
    """Find the feed of URL (autodiscovery on HTML pages) and append it to feeds.yaml."""
    from aggregator.ecosystem import add_source

    config = ctx.config()
    with errors_to_exit():
        line = add_source(config, url, source_id=source_id, title=title,
                          tags=_split(tags), categories=_split(categories))
    click.echo(line, err=True)


@main.command("import-opml")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_obj
def import_opml(ctx: Context, file: Path) -> None:
    """Add the feeds of an OPML file (from another reader) to feeds.yaml."""
    from aggregator.ecosystem import import_opml as run_import

    config = ctx.config()
    with errors_to_exit():
        added, skipped = run_import(config, file)
    for line in skipped:
        click.echo(f"skipped {line}", err=True)
    if added:
        click.echo(f"added {len(added)} sources to {config.path}: {', '.join(added)}", err=True)
    else:
        click.echo(f"added nothing to {config.path} ({len(skipped)} skipped)", err=True)


@main.command("export-opml")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write to FILE instead of stdout.")
@click.pass_obj
def export_opml(ctx: Context, output: Path | None) -> None:
    """Print OPML 2.0 of the configured sources, for another reader."""
    from aggregator.ecosystem import export_opml as run_export

    text = run_export(ctx.config())
    if output:
        output.write_text(text, encoding="utf-8")
    else:
        click.echo(text, nl=False)


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]
