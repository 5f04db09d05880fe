"""`peftsearch demo`: its shipped data, and the whole command on the tiny model (the real run on MiniLM-L6 is
`make demo`)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from peftsearch.demo import DEMO_DATA
from pruning.data import load_task
from pruning.spec import TaskSpec

from .support import ROOT, TINY


def test_the_shipped_sst2_sample_loads_and_is_cited():
    data = load_task(TaskSpec(train=str(DEMO_DATA / "train.tsv"), dev=str(DEMO_DATA / "dev.tsv"),
                              text_column="sentence"))
    assert (len(data.train), len(data.dev)) == (600, 200) and data.labels == ["0", "1"]
    readme = (DEMO_DATA / "README.md").read_text()
    assert "Socher" in readme and "GLUE" in readme
    for split in ("train", "dev"):
        digest = hashlib.sha256((DEMO_DATA / f"{split}.tsv").read_bytes()).hexdigest()
        assert digest in readme


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, tiny_model):
    env = {**os.environ, "PEFTSEARCH_MODELS": json.dumps({TINY: tiny_model}), "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    run = subprocess.run([sys.executable, "-m", "peftsearch.cli", "demo", "--home", str(tmp_path / "demo"),
                          "--model", TINY, "--budget", "2%", "--rounds", "2", "--steps-per-round", "4",
                          "--train-steps", "10"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    # the job's events, as they came: ten steps teach the tiny model nothing, so the search says it kept its prior
    assert "search: the supernet had not learned the task" in run.stderr and "status  succeeded" in run.stderr
    assert re.search(r"no pruning\W+the supernet had not learned", run.stdout)  # and so does the summary
    assert "Traceback" not in run.stderr
    downloaded = Path(re.search(r"downloaded to[\s│]+(\S+)", run.stdout).group(1))
    config = json.loads((downloaded / "peftsearch_config.json").read_text())
    assert downloaded.parent == tmp_path / "demo" and downloaded.name.startswith("job_")
    printed = re.search(r"accuracy on dev\W+(\d\.\d{4})", run.stdout).group(1)
    assert printed == f"{config['metrics']['accuracy']:.4f}"  # the summary shows what was downloaded
    assert re.search(r"archive sha256\W+[0-9a-f]{64}", run.stdout)
    assert len(re.findall(r"^\W+\d\s.*$", run.stdout.split("configuration per layer")[1], re.M)) == 4  # layers
    assert run.stdout.rstrip().endswith("server stopped")
