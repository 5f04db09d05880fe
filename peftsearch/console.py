"""What the client commands (`peftsearch jobs`, `peftsearch datasets`) and `peftsearch demo` share: the connection
options, the error handling, and the terminal views (a job's live progress, its summary, lists) drawn with rich.

stdout carries what a script reads (ids, tables, JSON); stderr what a person watches (progress, events, retries).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import rich.markup
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from pruning.result import format_backbone, format_front, format_unit, stock_peft_warning

from .client import DEFAULT_URL, Client, Job, PeftsearchError, Snapshot

LINE_EVERY_S = 10.0  # off a terminal, training progress is one line per this many seconds (and per phase/round)
# Off a terminal rich assumes 80 columns; a log or a pipe gets whole lines (an id or a sha256 is never cut in two).
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


def connection_options() -> argparse.ArgumentParser:
    """The options every client command takes (after its action: `peftsearch jobs list --url ...`)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--url", default=os.environ.get("PEFTSEARCH_URL", DEFAULT_URL),
                        help=f"the server (default $PEFTSEARCH_URL or {DEFAULT_URL})")
    parser.add_argument("--api-key", default=os.environ.get("PEFTSEARCH_API_KEY"),
                        help="a key from `peftsearch keys create` (default $PEFTSEARCH_API_KEY)")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="S",
                        help="seconds to wait for one answer before retrying it (default 30)")
    parser.add_argument("--retry-for", type=float, default=120.0, metavar="S",
                        help="seconds to keep retrying a request the server is too busy for or does not answer "
                             "(default 120); a followed job is followed until it ends, whatever this says")
    return parser


def run_command(args: argparse.Namespace, actions: dict[str, Callable[[Client, argparse.Namespace], int]]) -> int:
    """Run the chosen sub-command with a client; a failure is one line on stderr and exit status 1."""
    show_warnings()
    if not args.api_key:
        err.print("no API key: pass --api-key or set PEFTSEARCH_API_KEY (`peftsearch keys create --owner you` on "
                  "the server makes one)")
        return 2
    with Client(args.url, args.api_key, timeout=args.timeout, retry_for_s=args.retry_for) as client:
        try:
            return actions[args.action](client, args)
        except PeftsearchError as e:
            print_error(e)
            return 1
        except KeyboardInterrupt:
            err.print("interrupted; whatever the server is doing goes on")
            return 130


def show_warnings() -> None:
    """The client's warnings (retries, a server not answering) on stderr, above a live progress bar."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s", datefmt="[%X]",
                        handlers=[RichHandler(console=err, show_path=False, show_level=False)])


def print_error(error: Exception) -> None:
    err.print(f"[red]error:[/red] {rich.markup.escape(str(error))}", highlight=False)


def print_json(data: Any) -> None:
    out.print_json(json.dumps(data, default=str))


class JobView:
    """A followed job on stderr: its events as lines, and its progress (phase, round, step, loss, trainable
    params, the server's estimate of the time left) as a live bar on a terminal, or as a line per phase, round,
    or LINE_EVERY_S seconds elsewhere (a log, a pipe)."""

    def __init__(self, console: Console = err, prefix: str = ""):
        self.console, self.prefix = console, prefix
        self.progress: Progress | None = None
        self.last_head, self.last_line, self.last_at = None, None, 0.0

    def __enter__(self) -> JobView:
        if self.console.is_terminal:
            self.progress = Progress(TextColumn("{task.fields[head]}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[tail]}"), TimeElapsedColumn(), console=self.console,
                                     transient=True)
            self.progress.start()
            self.task = self.progress.add_task("", total=None, head="waiting", tail="")
        return self

    def __exit__(self, *_) -> None:
        if self.progress is not None:
            self.progress.stop()

    def show(self, snapshot: Snapshot) -> None:
        for event in snapshot.events:
            self.console.print(f"{self.prefix}{event.kind:>6}  {event.message}", highlight=False)
        progress = snapshot.job.progress
        if progress is None or snapshot.job.done:
            return
        head = progress.phase + (f" round {progress.round}/{progress.rounds}" if progress.round else "")
        tail = "  ".join(part for part in (
            f"loss {progress.loss:.4f}" if progress.loss is not None else "",
            f"{progress.trainable_params:,} params" if progress.trainable_params is not None else "",
            f"about {progress.eta_s:.0f} s left (server's estimate)" if progress.eta_s is not None else "") if part)
        if self.progress is not None:
            self.progress.update(self.task, head=head, tail=tail, total=progress.steps or None,
                                 completed=progress.step)
            return
        if not progress.steps:
            return
        line = f"{self.prefix}    {head} step {progress.step}/{progress.steps}  {tail}"
        if line != self.last_line and (head != self.last_head or time.monotonic() - self.last_at >= LINE_EVERY_S):
            self.console.print(line, highlight=False)
            self.last_head, self.last_line, self.last_at = head, line, time.monotonic()


def follow(job: Job, poll_s: float = 1.0, prefix: str = "", stop: Callable[[], str | None] = lambda: None) -> Job:
    """Follow the job to its end in a JobView; `stop()` returning a reason ends the following early with a
    PeftsearchError (the demo's server exiting, say)."""
    with JobView(prefix=prefix) as view:
        for snapshot in job.follow(poll_s):
            view.show(snapshot)
            job = snapshot.job
            reason = stop()
            if reason and not job.done:
                raise PeftsearchError(reason)
    return job


def summary_tables(job: Job, downloaded: str | None = None) -> list[Table]:
    """A finished job at a glance: the outcome, then the chosen configuration layer by layer."""
    outcome = Table(title=f"job {job.id}: {job.status}", show_header=False, title_justify="left")
    outcome.add_column(style="bold")
    outcome.add_column()
    outcome.add_row("model", job.model)
    outcome.add_row("dataset", job.dataset_id)
    outcome.add_row("budget", str(job.budget))
    if job.error is not None:
        outcome.add_row("error", f"{job.error.code}: {job.error.message}")
    result = job.result
    if result is None:
        return [outcome]
    outcome.add_row(f"{result.metric_name} on dev", f"{result.metric:.4f}")
    outcome.add_row("all dev metrics", ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()))
    share = result.trainable_params / result.backbone_params_before if result.backbone_params_before else 0.0
    outcome.add_row("trainable PEFT params", f"{result.trainable_params:,} ({share:.2%} of the backbone; budget "
                                             f"{result.budget_params:,}; task head {result.head_params:,})")
    if result.backbone_params != result.backbone_params_before:
        outcome.add_row("backbone params", f"{result.backbone_params_before:,} -> {result.backbone_params:,}")
    outcome.add_row("wall time", f"search {result.search_wall_s:.0f} s, retrain {result.retrain_wall_s:.0f} s on "
                                 f"{result.device} (peak {result.peak_memory_mb:.0f} MB)")
    if job.artifact is not None:
        outcome.add_row("archive sha256", job.artifact.sha256)
    if downloaded:
        outcome.add_row("downloaded to", downloaded)
    warning = stock_peft_warning(result.configuration.get("stock_peft"))
    if warning:
        outcome.add_row("[bold]stock peft[/bold]", rich.markup.escape(warning))
    if result.configuration.get("prior"):
        outcome.add_row("[bold]no pruning[/bold]", rich.markup.escape(result.configuration["prior"]))
    backbone = format_backbone(result.configuration.get("backbone"))
    if backbone:
        outcome.add_row("backbone pruning", rich.markup.escape(backbone))
    layers = Table(title="configuration per layer", title_justify="left")
    types = result.configuration.get("space", {}).get("types", [])
    for name in ("layer", *types):
        layers.add_column(name)
    for entry in result.configuration.get("layers", []):
        layers.add_row(str(entry["layer"]), *(format_unit(kind, entry["modules"].get(kind)) for kind in types))
    if not result.front:
        return [outcome, layers]
    front = Table(title="configurations the search passed through", title_justify="left", show_header=False)
    front.add_column(no_wrap=True)
    front.add_row(rich.markup.escape(format_front(result.front, result.metric_name)))
    return [outcome, layers, front]


def id_column(header: str, ids: list[str]) -> Column:
    """A table column that a narrow terminal never cuts: an id is copied from it."""
    return Column(header, no_wrap=True, min_width=max(map(len, ids), default=len(header)))


def age(when: datetime) -> str:
    seconds = (datetime.now(timezone.utc) - when).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f}{unit} ago"
    return f"{max(seconds, 0):.0f}s ago"


def print_tables(tables: list[Table]) -> None:
    for table in tables:
        out.print(table)
