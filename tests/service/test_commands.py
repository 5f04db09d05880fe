"""`peftsearch keys` and `peftsearch worker` as a user runs them (embedded settings: a SQLite file)."""

from __future__ import annotations

import os
import subprocess
import sys

from sqlalchemy import create_engine, text

from .support import ROOT


def peftsearch(*args: str, home) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "BROKER_URL")}
    return subprocess.run([sys.executable, "-m", "peftsearch.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**env, "PEFTSEARCH_HOME": str(home)}, timeout=120)


def test_keys_create_list_revoke(tmp_path):
    created = peftsearch("keys", "create", "--owner", "ada", "--name", "laptop", home=tmp_path)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("psk_") and len(key) > 40 and "\n" not in key  # the key alone on stdout
    key_id = created.stderr.split("id ")[1].split(",")[0]

    listed = peftsearch("keys", "list", home=tmp_path)
    assert f"{key_id}  {key[:12]}...  owner=ada  name='laptop'  active" in listed.stdout
    with create_engine(f"sqlite:///{tmp_path / 'peftsearch.sqlite3'}").connect() as connection:
        assert key not in str(connection.execute(text("SELECT * FROM api_keys")).all())  # only its hash

    assert peftsearch("keys", "revoke", key_id, home=tmp_path).returncode == 0
    assert "revoked" in peftsearch("keys", "list", home=tmp_path).stdout
    again = peftsearch("keys", "revoke", key_id, home=tmp_path)
    assert again.returncode == 1 and f"no active key {key_id}" in again.stdout


def test_keys_create_needs_an_owner(tmp_path):
    run = peftsearch("keys", "create", home=tmp_path)
    assert run.returncode == 2 and "--owner" in run.stderr
    blank = peftsearch("keys", "create", "--owner", " ", home=tmp_path)
    assert blank.returncode == 2 and "must not be empty" in blank.stderr


def test_worker_needs_a_broker(tmp_path):
    run = peftsearch("worker", home=tmp_path)
    assert run.returncode == 2 and "BROKER_URL" in run.stdout


def test_serve_refuses_several_processes_on_the_embedded_default(tmp_path):
    run = peftsearch("serve", "--workers", "2", home=tmp_path)
    assert run.returncode == 1 and "set BROKER_URL" in run.stderr


def test_several_api_processes_accept_connections_with_tcp_nodelay():
    """Without TCP_NODELAY every keep-alive response after the first waits for the client's delayed ACK (~40 ms)."""
    import asyncio
    import socket

    import uvicorn

    from peftsearch.serve import tcp_listener

    async def accepted_nodelay() -> int:
        listener = tcp_listener(uvicorn.Config("api.app:create_app", host="127.0.0.1", port=0, workers=2))
        seen = asyncio.get_running_loop().create_future()

        def on_connect(reader, writer):
            seen.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_connect, sock=listener)
        _, writer = await asyncio.open_connection(*listener.getsockname())
        try:
            return await asyncio.wait_for(seen, 10)
        finally:
            writer.close()
            server.close()

    assert asyncio.run(accepted_nodelay()) == 1


def test_an_unknown_flag_is_blamed_on_the_subcommand_that_got_it(tmp_path):
    run = peftsearch("jobs", "list", "--bogus", home=tmp_path)
    assert run.returncode == 2
    assert run.stderr.startswith("usage: peftsearch jobs list ")  # that command's flags, not the top level's
    assert run.stderr.rstrip().endswith("peftsearch jobs list: error: unrecognized arguments: --bogus")
