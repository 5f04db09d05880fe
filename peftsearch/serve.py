"""`peftsearch serve`: the REST API. With no BROKER_URL it is the whole service in one process: the database
(SQLite under ./var unless DATABASE_URL says otherwise) is migrated on start and jobs run in a thread."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import threading

# uvicorn's default is 5 s: on a loaded 2-core host, API processes that were alive and serving missed it and were
# killed and restarted (issue 11). A process that is really hung is still replaced, a minute later.
WORKER_HEALTHCHECK_S = 60


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this "
                                                            "machine only; 0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "1")),
                        help="API processes (default $WEB_CONCURRENCY or 1); more than one needs a BROKER_URL")
    parser.add_argument("--timeout-worker-healthcheck", type=int, default=WORKER_HEALTHCHECK_S, metavar="S",
                        help="with --workers > 1: seconds an API process may take to answer the supervisor's "
                             f"health check before it is killed and replaced (default {WORKER_HEALTHCHECK_S})")


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app
    from store.db import upgrade
    from store.settings import get_settings
    from worker import reaper, webhooks

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    if args.workers < 1:
        raise SystemExit("--workers must be at least 1")
    if args.timeout_worker_healthcheck < 1:
        raise SystemExit("--timeout-worker-healthcheck must be at least 1 second")
    if settings.embedded and args.workers > 1:
        raise SystemExit("the embedded default runs jobs inside its one serving process: set BROKER_URL (and "
                         "DATABASE_URL) to serve with several API processes")
    stop = threading.Event()
    if settings.embedded:
        from worker import embedded

        upgrade(settings.db_url)
        threading.Thread(target=embedded.run_forever, args=(settings, stop), name="worker", daemon=True).start()
    # Any API process may reap: each re-queue is a conditional update, so only one of several wins.
    threading.Thread(target=reaper.reap_forever, args=(settings, stop), name="reaper", daemon=True).start()
    # Likewise any may send webhook deliveries: each is claimed by one sender at a time (store/webhooks.py).
    threading.Thread(target=webhooks.deliver_forever, args=(settings, stop), name="webhooks", daemon=True).start()
    mode = "embedded worker" if settings.embedded else f"broker {settings.broker_url}, queue {settings.queue}"
    logging.getLogger("peftsearch").info("serving on http://%s:%d (%s, %d API process%s)", args.host, args.port,
                                         mode, args.workers, "es" if args.workers > 1 else "")
    if args.workers == 1:
        uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info")
    else:  # each process builds its own app (and pool) from the same environment; this one supervises and reaps
        from uvicorn.supervisors import Multiprocess

        config = multiprocess_config(args)
        Multiprocess(config, sockets=[tcp_listener(config)]).run()
    stop.set()  # a job still running in the embedded worker is resumed by the reaper after the next start
    return 0


def multiprocess_config(args: argparse.Namespace):
    import uvicorn

    return uvicorn.Config("api.app:create_app", factory=True, workers=args.workers, host=args.host, port=args.port,
                          log_level="info", timeout_worker_healthcheck=args.timeout_worker_healthcheck)


def tcp_listener(config) -> socket.socket:
    """The listening socket uvicorn binds for several processes, marked as TCP. uvicorn leaves its protocol at 0,
    so asyncio never sets TCP_NODELAY on the connections it accepts, and every keep-alive response after the first
    waits ~40 ms for the client's delayed ACK (uvicorn issue #3149)."""
    bound = config.bind_socket()
    listener = socket.socket(bound.family, bound.type, socket.IPPROTO_TCP, fileno=bound.detach())
    listener.set_inheritable(True)
    return listener
