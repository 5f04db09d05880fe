"""`peftsearch serve`: the REST API. With no BROKER_URL it is the whole service in one process: the database
(SQLite under ./var unless DATABASE_URL says otherwise) is migrated on start and jobs run in a thread."""

from __future__ import annotations

import argparse
import logging
import threading


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app
    from store.db import upgrade
    from store.settings import get_settings
    from worker import reaper

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    stop = threading.Event()
    if settings.embedded:
        from worker import embedded

        upgrade(settings.db_url)
        threading.Thread(target=embedded.run_forever, args=(settings, stop), name="worker", daemon=True).start()
    # Any API process may reap: each re-queue is a conditional update, so only one of several wins.
    threading.Thread(target=reaper.reap_forever, args=(settings, stop), name="reaper", daemon=True).start()
    mode = "embedded worker" if settings.embedded else f"broker {settings.broker_url}, queue {settings.queue}"
    logging.getLogger("peftsearch").info("serving on http://%s:%d (%s)", args.host, args.port, mode)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info")
    stop.set()  # a job still running in the embedded worker is resumed by the reaper after the next start
    return 0
