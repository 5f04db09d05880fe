"""`peftsearch worker`: a Celery worker on the configured broker and queue (the compose `worker` service)."""

from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--loglevel", default="INFO")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from store.settings import get_settings

    settings = get_settings()
    if settings.embedded:
        print("peftsearch worker needs BROKER_URL (e.g. redis://localhost:6379/0); "
              "without it, `peftsearch serve` runs jobs itself.")
        return 2
    from worker.celery_app import app

    app.worker_main(["worker", "--queues", settings.queue, "--loglevel", args.loglevel, "--pool", "prefork"])
    return 0
