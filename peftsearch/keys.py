"""`peftsearch keys create|list|revoke`: API keys. A key is printed once, at creation; only its hash is kept."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="make a key and print it")
    create.add_argument("--owner", required=True, help="who the key acts for: keys of one owner share its jobs")
    create.add_argument("--name", default="", help="a label to tell keys apart")
    actions.add_parser("list", help="list keys (never the keys themselves)")
    revoke = actions.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")


def run(args: argparse.Namespace) -> int:
    from store import keys
    from store.db import session_factory, upgrade
    from store.settings import get_settings

    settings = get_settings()
    if settings.embedded:  # the embedded database may not exist yet; the served one is migrated by `migrate`
        upgrade(settings.db_url)
    with session_factory(settings.db_url).begin() as session:
        if args.action == "create":
            if not args.owner.strip():
                print("--owner must not be empty", file=sys.stderr)
                return 2
            row, key = keys.create_key(session, args.owner, args.name)
            print(key)
            print(f"(id {row.id}, owner {row.owner}; shown once, keep it safe)", file=sys.stderr)
        elif args.action == "list":
            for row in keys.list_keys(session):
                state = f"revoked {row.revoked_at:%Y-%m-%d}" if row.revoked_at else "active"
                print(f"{row.id}  {row.prefix}...  owner={row.owner}  name={row.name!r}  {state}")
        elif not keys.revoke_key(session, args.key_id):
            print(f"no active key {args.key_id}")
            return 1
    return 0
