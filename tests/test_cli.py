"""`python -m pruning`: a search from flags prints the summary table; input errors exit 2 with a clear message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import LAYERS, unit_size

from pruning.cli import main

ROOT = Path(__file__).parent.parent
# two steps teach the toy task nothing: prune by the scores anyway, since these tests are about the rounds
SMALL = ["--budget", "8000", "--rounds", "2", "--steps-per-round", "2", "--steps", "2", "--batch-size", "8",
         "--unlearned", "prune"]
WHOLE_QV = ["--lora-targets", "q,v", "--rank-step", "0"]  # the space conftest's sizes are of


def test_search_from_flags_prints_the_summary(tiny_model, toy_task, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["--model", tiny_model, "--train", toy_task[0], "--dev", toy_task[1], "--out", str(out), *SMALL,
                 *WHOLE_QV])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads((out / "result.json").read_text())
    units = result["configuration"]["units"]
    assert result["trainable_params"] == sum(unit_size(k) for k in units) <= 8000
    assert len(result["rounds"]) == 2
    lines = captured.out.splitlines()
    assert lines[0].split() == ["layer", "lora", "adapter", "prefix"]
    for layer in range(LAYERS):  # one row per layer: q8/v8 (rank per projection), d=16, p=8 or '-'
        expected = [str(layer)] + [{"lora": "q8/v8", "adapter": "d=16", "prefix": "p=8"}[kind]
                                   if f"{kind}.{layer}" in units else "-" for kind in ("lora", "adapter", "prefix")]
        assert lines[1 + layer].split() == expected
    text = captured.out
    assert f"PEFT parameters    {result['trainable_params']:,} (budget 8,000; head 130)" in text
    assert f"layers w/o modules {result['pruned_layers'] or 'none'}" in text
    assert f"result             {out}" in text
    assert "dev metrics        accuracy " in text
    front = text.split("configurations passed through (validation split, before retraining):\n")[1].splitlines()
    assert front[0].startswith("supernet") and front[2].startswith("after round 2")
    assert f"{result['trainable_params']:,} params  validation accuracy " in front[2] and "chosen)" in front[2]
    # progress goes to stderr: phases and rounds
    assert "load: loading" in captured.err and "round 2/2:" in captured.err


def test_the_default_space_spreads_lora_over_every_projection_at_rank_grain(tiny_model, toy_task, tmp_path,
                                                                          capsys):
    out = tmp_path / "out"
    code = main(["--model", tiny_model, "--train", toy_task[0], "--dev", toy_task[1], "--out", str(out), *SMALL])
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "result.json").read_text())
    space = json.loads((out / "peftsearch_config.json").read_text())["space"]
    assert space["lora"]["targets"] == ["q", "k", "v", "o", "ffn_in", "ffn_out"] and space["lora"]["rank_step"] == 2
    ranks = result["configuration"]["lora_ranks"]
    assert ranks and all(rank in (2, 4, 6, 8) for rank in ranks.values())
    assert result["trainable_params"] <= 8000
    assert any(u["role"] for r in result["rounds"] for u in r["removed"])  # ranks shrank, not only whole units


def test_a_search_that_never_learned_says_it_kept_the_prior(tiny_model, toy_task, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["--model", tiny_model, "--train", toy_task[0], "--dev", toy_task[1], "--out", str(out),
                 *SMALL[:-2]])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads((out / "result.json").read_text())
    assert result["rounds"] == [] and result["configuration"]["prior"].startswith("the supernet had not learned")
    assert f"NOTE: {result['configuration']['prior']}" in captured.out
    assert "configurations passed through" not in captured.out  # no rounds, no front


def test_spec_file_with_flag_overrides(tiny_model, toy_task, tmp_path, capsys):
    spec = {"model": tiny_model, "task": {"train": toy_task[0], "dev": toy_task[1]}, "budget": "1%",
            "space": {"types": ["adapter"]}, "schedule": {"rounds": 1, "steps_per_round": 1},
            "train": {"steps": 1, "batch_size": 8}}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    code = main(["--spec", str(path), "--budget", "4500", "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["budget_params"] == 4500  # the flag won over the file's 1%
    assert all(k.startswith("adapter.") for k in result["configuration"]["units"])
    assert result["trainable_params"] == 2 * unit_size("adapter.0")


@pytest.mark.parametrize("args, message", [
    (["--budget", "150%"], "invalid spec: budget: a percentage must be in (0, 100]"),
    (["--budget", "lots"], "invalid spec: budget: 'lots' is not a parameter count"),
    (["--rounds", "0"], "invalid spec: schedule.rounds: must be a positive integer, got 0"),
    (["--types", "lora,ia3"], "invalid spec: space.types: choose one or more of lora, adapter, prefix"),
    (["--task", "sst2"], "invalid spec: task: --task 'sst2': use glue:<name>"),
])
def test_a_bad_spec_exits_2(tiny_model, toy_task, tmp_path, capsys, args, message):
    code = main(["--model", tiny_model, "--train", toy_task[0], "--dev", toy_task[1], "--out", str(tmp_path / "o"),
                 *args])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.startswith("peftsearch search: ") and message in captured.err
    assert captured.out == ""
    assert not (tmp_path / "o").exists()


def test_missing_model_flag_exits_2(toy_task, tmp_path, capsys):
    assert main(["--train", toy_task[0], "--dev", toy_task[1], "--out", str(tmp_path / "o")]) == 2
    assert "invalid spec: model: give --model" in capsys.readouterr().err


def test_missing_dev_file_flag_exits_2(tiny_model, toy_task, tmp_path, capsys):
    assert main(["--model", tiny_model, "--train", toy_task[0], "--out", str(tmp_path / "o")]) == 2
    assert "invalid spec: task: give either glue (+ data_dir) or both train and dev" in capsys.readouterr().err


def test_a_missing_data_file_exits_2_naming_it(tiny_model, toy_task, tmp_path, capsys):
    missing = tmp_path / "nowhere" / "train.csv"
    code = main(["--model", tiny_model, "--train", str(missing), "--dev", toy_task[1], "--out", str(tmp_path / "o"),
                 *SMALL])
    captured = capsys.readouterr()
    assert code == 2
    assert f"peftsearch search: {missing}: file not found" in captured.err
    assert "Traceback" not in captured.err


def test_an_invalid_assignment_exits_2(tiny_model, toy_task, tmp_path, capsys):
    code = main(["--model", tiny_model, "--train", toy_task[0], "--dev", toy_task[1], "--out", str(tmp_path / "o"),
                 "--assignment", "magnitude", *SMALL])
    assert code == 2
    assert "policy.assignment: 'magnitude' is not one of" in capsys.readouterr().err


def test_a_missing_spec_file_exits_2(tmp_path, capsys):
    assert main(["--spec", str(tmp_path / "nope.json"), "--out", str(tmp_path / "o")]) == 2
    assert "nope.json" in capsys.readouterr().err


def test_a_malformed_spec_file_exits_2(tmp_path, capsys):
    path = tmp_path / "spec.json"
    path.write_text('{"model": "m",')
    assert main(["--spec", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "spec.json" in capsys.readouterr().err


def test_a_spec_file_that_is_not_an_object_exits_2(tmp_path, capsys):
    path = tmp_path / "spec.json"
    path.write_text('["model"]')
    assert main(["--spec", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "expected an object" in capsys.readouterr().err


def test_a_missing_model_exits_2_naming_it(toy_task, tmp_path, capsys):
    model = str(tmp_path / "no-such-model")
    code = main(["--model", model, "--train", toy_task[0], "--dev", toy_task[1], "--out", str(tmp_path / "o"),
                 *SMALL])
    assert code == 2
    assert model in capsys.readouterr().err


def test_python_dash_m_pruning(tiny_model, toy_task, tmp_path):
    """The module entry point, as a user runs it: a bad budget is reported without importing torch."""
    run = subprocess.run(
        [sys.executable, "-m", "pruning", "--model", tiny_model, "--train", toy_task[0], "--dev", toy_task[1],
         "--out", str(tmp_path / "o"), "--budget", "0%"],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip() == "peftsearch search: invalid spec: budget: a percentage must be in (0, 100]"
    assert run.stdout == ""


def test_a_wrong_column_is_reported_before_torch_is_imported(tiny_model, toy_task, tmp_path):
    code = ("import sys; from pruning.cli import main; "
            f"code = main(['--model', {tiny_model!r}, '--train', {toy_task[0]!r}, '--dev', {toy_task[1]!r}, "
            f"'--text-column', 'review', '--out', {str(tmp_path / 'o')!r}]); "
            "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(code)")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert 'missing column "review"' in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "o").exists()
