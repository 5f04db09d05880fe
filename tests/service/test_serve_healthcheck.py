"""`peftsearch serve --workers N`: uvicorn's supervisor gives each API process WORKER_HEALTHCHECK_S to answer its
health check, not uvicorn's 5 s, which a loaded host's live processes missed (they were killed and restarted)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import uvicorn

from peftsearch import serve

from .support import ROOT


def serve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    return parser.parse_args(argv)


def test_the_supervisor_waits_longer_than_uvicorns_default():
    config = serve.multiprocess_config(serve_args("--workers", "2"))
    assert config.workers == 2 and config.factory
    assert config.timeout_worker_healthcheck == serve.WORKER_HEALTHCHECK_S
    assert serve.WORKER_HEALTHCHECK_S > uvicorn.Config("api.app:create_app").timeout_worker_healthcheck


def test_the_health_check_timeout_is_an_option():
    args = serve_args("--workers", "2", "--timeout-worker-healthcheck", "7")
    assert serve.multiprocess_config(args).timeout_worker_healthcheck == 7


def test_a_health_check_timeout_under_a_second_is_refused(tmp_path):
    run = subprocess.run([sys.executable, "-m", "peftsearch.cli", "serve", "--workers", "2",
                          "--timeout-worker-healthcheck", "0"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PEFTSEARCH_HOME": str(tmp_path)})
    assert run.returncode == 1 and "--timeout-worker-healthcheck must be at least 1" in run.stderr
