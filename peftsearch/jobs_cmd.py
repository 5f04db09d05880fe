"""`peftsearch jobs submit|list|get|watch|cancel|download|delete`: search jobs on a server, through
peftsearch.Client."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def json_object(text: str) -> dict[str, Any]:
    """A JSON object given inline or as @file.json."""
    try:
        raw = Path(text[1:]).read_text() if text.startswith("@") else text
        value = json.loads(raw)
    except (OSError, ValueError) as e:
        raise argparse.ArgumentTypeError(f"not a JSON object or @file holding one: {e}") from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"train\": {\"steps\": 300}}'")
    return value


def add_search_shortcuts(parser: argparse.ArgumentParser) -> None:
    """The most used fields of the engine's SearchSpec as options (see search_with)."""
    parser.add_argument("--rounds", type=int, help="search rounds (search.schedule.rounds)")
    parser.add_argument("--steps-per-round", type=int, help="training steps per round (search.schedule.steps_per_round)")
    parser.add_argument("--train-steps", type=int, help="retraining steps of the result (search.train.steps)")
    parser.add_argument("--seed", type=int, help="search.seed")


def search_with(search: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """`search` with the shortcut options that were given written into it."""
    search = json.loads(json.dumps(search))  # a deep copy
    for value, section, name in ((args.rounds, "schedule", "rounds"),
                                 (args.steps_per_round, "schedule", "steps_per_round"),
                                 (args.train_steps, "train", "steps")):
        if value is not None:
            search.setdefault(section, {})[name] = value
    if args.seed is not None:
        search["seed"] = args.seed
    return search


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from store.models import STATUSES

    from .console import connection_options

    common = [connection_options()]
    actions = parser.add_subparsers(dest="action", required=True, metavar="action")

    submit = actions.add_parser("submit", parents=common,
                                help="submit a search; prints the job id (then follows it with --watch)")
    submit.add_argument("--model", required=True, help="a base model the server offers (GET /v1/models)")
    submit.add_argument("--dataset", required=True, help="a dataset id from `peftsearch datasets upload`")
    submit.add_argument("--budget", help="trainable PEFT parameters: a count (70000, 70k) or a share of the "
                                         "backbone (0.5%%); default the server's, 0.5%%")
    submit.add_argument("--search", type=json_object, default={}, metavar="JSON|@FILE",
                        help="overrides of the engine's SearchSpec: space, policy, schedule, train, backbone, "
                             "retrain, seed (docs/service.md)")
    add_search_shortcuts(submit)
    submit.add_argument("--idempotency-key", help="default a new uuid4; give your own to make a rerun of the same "
                                                  "command return the job the first run submitted")
    submit.add_argument("--name", help="your label for the job")
    submit.add_argument("--metadata", type=json_object, metavar="JSON|@FILE",
                        help="your own small JSON object, returned with the job (at most 4 KiB)")
    submit.add_argument("--webhook-url", metavar="URL",
                        help="POST the job's end there too; the secret that signs it is printed on stderr, once")
    add_follow_arguments(submit)
    submit.add_argument("--watch", action="store_true", help="follow the job to its end, then print its summary")

    listing = actions.add_parser("list", parents=common, help="your jobs, newest first")
    listing.add_argument("--status", choices=STATUSES, action="append", help="repeat for several")
    listing.add_argument("--model")
    listing.add_argument("--dataset", help="a dataset id")
    listing.add_argument("--created-after", metavar="TIME", help="ISO 8601, e.g. 2026-12-01 or 2026-12-01T12:00Z "
                                                                 "(UTC unless it says otherwise)")
    listing.add_argument("--created-before", metavar="TIME")
    listing.add_argument("--limit", type=int, default=20, help="how many (default 20; 0: all)")
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")

    get = actions.add_parser("get", parents=common,
                             help="the whole job as JSON (status, progress, result, error, artifact)")
    get.add_argument("job_id")

    watch = actions.add_parser("watch", parents=common,
                               help="follow a job to its end (Ctrl-C stops watching, not the job)")
    watch.add_argument("job_id")
    add_follow_arguments(watch)

    cancel = actions.add_parser("cancel", parents=common, help="cancel a queued, validating or running job")
    cancel.add_argument("job_id")
    cancel.add_argument("--wait", action="store_true", help="wait until a started (validating or running) job has stopped")

    download = actions.add_parser("download", parents=common,
                                  help="download and unpack a succeeded job's result to OUT/<job id>")
    download.add_argument("job_id")
    download.add_argument("--out", default=".", help="directory (default: here)")
    download.add_argument("--archive", action="store_true", help="keep the checked .tar.gz instead, OUT/<job id>.tar.gz")

    delete = actions.add_parser("delete", parents=common, help="delete an ended job with its events, rounds and "
                                                               "artifact (a job that has not ended: cancel it first)")
    delete.add_argument("job_id")


def add_follow_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--download", metavar="DIR", help="once it has succeeded, download the result to DIR/<job id>")
    parser.add_argument("--poll", type=float, default=1.0, metavar="S", help="seconds between looks (default 1)")


def run(args: argparse.Namespace) -> int:
    from .console import run_command

    return run_command(args, {"submit": submit, "list": list_jobs, "get": get, "watch": watch, "cancel": cancel,
                              "download": download, "delete": delete})


def submit(client, args: argparse.Namespace) -> int:
    from .console import err, out

    job = client.submit(args.model, args.dataset, budget=args.budget, search=search_with(args.search, args),
                        idempotency_key=args.idempotency_key, name=args.name, metadata=args.metadata,
                        webhook_url=args.webhook_url)
    out.print(job.id, highlight=False)
    if job.estimate_s is not None:
        err.print(f"queued: about {job.estimate_s / 60:.0f} min at most once a worker takes it (the pace of this "
                  f"server's earlier jobs on {job.model})", highlight=False)
    if job.webhook_secret:
        err.print(f"webhook {job.webhook.id} -> {job.webhook.url}, signed with (shown once): {job.webhook_secret}",
                  highlight=False)
    return watch_job(job, args) if args.watch else 0


def watch(client, args: argparse.Namespace) -> int:
    return watch_job(client.job(args.job_id), args)


def watch_job(job, args: argparse.Namespace) -> int:
    from .console import follow, print_tables, summary_tables

    job = follow(job, args.poll)
    downloaded = str(job.download(args.download)) if args.download and job.succeeded else None
    print_tables(summary_tables(job, downloaded))
    return 0 if job.succeeded else 1


def list_jobs(client, args: argparse.Namespace) -> int:
    from rich import box
    from rich.table import Table

    from .console import age, err, id_column, out, print_json

    jobs = client.jobs(status=args.status, limit=args.limit or None, model=args.model, dataset=args.dataset,
                       created_after=args.created_after, created_before=args.created_before)
    if args.json:
        print_json([job.model_dump(mode="json") for job in jobs])
        return 0
    err.print(f"{len(jobs)} of {jobs.total} job(s)", highlight=False)
    table = Table(id_column("job", [j.id for j in jobs]), "name", "status", "model",
                  id_column("dataset", [j.dataset_id for j in jobs]), "progress", "metric", "params", "created",
                  box=box.SIMPLE_HEAD)
    for job in jobs:
        where = (job.phase or "") + (f" {job.round}/{job.rounds}" if job.round else "")
        metric = f"{job.metric_name} {job.metric:.4f}" if job.metric is not None else ""
        params = f"{job.trainable_params:,}" if job.trainable_params is not None else ""
        table.add_row(job.id, job.name or "", job.status, job.model, job.dataset_id, where, metric, params,
                      age(job.created_at))
    out.print(table)
    return 0


def get(client, args: argparse.Namespace) -> int:
    from .console import print_json

    print_json(client.job(args.job_id).model_dump(mode="json"))
    return 0


def cancel(client, args: argparse.Namespace) -> int:
    from .console import out

    job = client.cancel(args.job_id)
    if args.wait:
        job = job.wait()
    out.print(f"{job.id} {job.status}", highlight=False)
    return 0


def download(client, args: argparse.Namespace) -> int:
    from .console import out

    if args.archive:
        path = client.download_archive(args.job_id, Path(args.out) / f"{args.job_id}.tar.gz")
    else:
        path = client.download(args.job_id, args.out)
    out.print(str(path), highlight=False)
    return 0


def delete(client, args: argparse.Namespace) -> int:
    from .console import out

    client.delete_job(args.job_id)
    out.print(f"{args.job_id} deleted", highlight=False)
    return 0
