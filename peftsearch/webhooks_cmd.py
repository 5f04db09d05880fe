"""`peftsearch webhooks create|list|get|delete|deliveries`: where a server POSTs your jobs' ends, through
peftsearch.Client."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from store.webhooks import EVENT_TYPES

    from .console import connection_options

    common = [connection_options()]
    actions = parser.add_subparsers(dest="action", required=True, metavar="action")

    create = actions.add_parser("create", parents=common,
                                help="POST your jobs' ends to URL; prints the secret that signs them (shown once)")
    create.add_argument("webhook_url", metavar="URL", help="an http:// or https:// URL without credentials (--url "
                                                           "is the server's)")
    create.add_argument("--event", choices=EVENT_TYPES, action="append", dest="events",
                        help="repeat for several (default: all of them)")
    create.add_argument("--json", action="store_true", help="the whole answer as JSON (id, secret, ...)")

    listing = actions.add_parser("list", parents=common, help="your webhooks for all your jobs, newest first")
    listing.add_argument("--limit", type=int, default=20, help="how many (default 20; 0: all)")
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")

    get = actions.add_parser("get", parents=common, help="one webhook as JSON (without its secret)")
    get.add_argument("webhook_id")

    delete = actions.add_parser("delete", parents=common, help="delete a webhook with its deliveries")
    delete.add_argument("webhook_id")

    deliveries = actions.add_parser("deliveries", parents=common,
                                    help="a webhook's deliveries, or a job's (--job), newest first")
    which = deliveries.add_mutually_exclusive_group(required=True)
    which.add_argument("webhook_id", nargs="?")
    which.add_argument("--job", metavar="JOB_ID", help="the deliveries of this job's end, to any of its webhooks")
    deliveries.add_argument("--limit", type=int, default=20, help="how many (default 20; 0: all)")
    deliveries.add_argument("--json", action="store_true", help="JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from .console import run_command

    return run_command(args, {"create": create, "list": list_webhooks, "get": get, "delete": delete,
                              "deliveries": list_deliveries})


def create(client, args: argparse.Namespace) -> int:
    from .console import err, out, print_json

    hook = client.create_webhook(args.webhook_url, events=args.events)
    if args.json:
        print_json(hook.model_dump(mode="json"))
        return 0
    out.print(hook.secret, highlight=False)
    err.print(f"webhook {hook.id}: {', '.join(hook.events)} -> {hook.url}; its secret (above) signs each delivery "
              "and is not shown again", highlight=False)
    return 0


def list_webhooks(client, args: argparse.Namespace) -> int:
    from rich import box
    from rich.table import Table

    from .console import age, id_column, out, print_json

    hooks = client.webhooks(limit=args.limit or None)
    if args.json:
        print_json([hook.model_dump(mode="json") for hook in hooks])
        return 0
    table = Table(id_column("webhook", [h.id for h in hooks]), "url", "events", "created", box=box.SIMPLE_HEAD)
    for hook in hooks:
        table.add_row(hook.id, hook.url, ", ".join(hook.events), age(hook.created_at))
    out.print(table)
    return 0


def get(client, args: argparse.Namespace) -> int:
    from .console import print_json

    print_json(client.webhook(args.webhook_id).model_dump(mode="json"))
    return 0


def delete(client, args: argparse.Namespace) -> int:
    from .console import out

    client.delete_webhook(args.webhook_id)
    out.print(f"{args.webhook_id} deleted", highlight=False)
    return 0


def list_deliveries(client, args: argparse.Namespace) -> int:
    from rich import box
    from rich.table import Table

    from .console import age, id_column, out, print_json

    deliveries = client.deliveries(args.webhook_id, job=args.job, limit=args.limit or None)
    if args.json:
        print_json([delivery.model_dump(mode="json") for delivery in deliveries])
        return 0
    table = Table(id_column("delivery", [d.id for d in deliveries]), id_column("job", [d.job_id for d in deliveries]),
                  "type", "status", "attempts", "last answer", "last attempt", "next attempt", box=box.SIMPLE_HEAD)
    for d in deliveries:
        answer = d.error or (str(d.response_status) if d.response_status is not None else "")
        table.add_row(d.id, d.job_id, d.type, d.status, str(d.attempts), answer,
                      age(d.last_attempt_at) if d.last_attempt_at else "",
                      d.next_attempt_at.strftime("%Y-%m-%d %H:%M:%S UTC") if d.next_attempt_at else "")
    out.print(table)
    return 0
