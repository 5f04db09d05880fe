"""The decoder benchmark (bench/decoder.py): its budget at the projections' real sizes, the chatterbot-corpus
conversion, the report (a loss is better lower), one run of each method on a tiny LLaMA, and the command end to
end (a child process, the store, the report, the refusal without SmolLM2)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench.decoder import METHODS, TASKS, chatterbot_chat, chatterbot_pairs, report

CORPUS = """\
categories:
- test
conversations:
- - Hello
  - Hi there
- - What is AI?
  - A field of computer science.
  - Tell me more.
- - yes
  - no
- - Hello
  - Hi there
- - ''
  - An answer to nothing
"""


def test_lora_budget_counts_v_at_its_real_size(tmp_path):
    from transformers import BertConfig, LlamaConfig

    from bench.quality import lora_budget

    hidden, layers, rank = 64, 4, 8
    BertConfig(vocab_size=100, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
               intermediate_size=128).save_pretrained(tmp_path / "bert")
    # an encoder: q and v are hidden x hidden, the formula quality.py always used (MiniLM: 73,728)
    assert lora_budget(str(tmp_path / "bert"), rank) == layers * 2 * rank * 2 * hidden
    LlamaConfig(vocab_size=100, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                num_key_value_heads=1, intermediate_size=128).save_pretrained(tmp_path / "llama")
    # grouped-query attention: v maps 64 -> 1 key/value head of 16
    assert lora_budget(str(tmp_path / "llama"), rank) == layers * rank * ((hidden + hidden) + (hidden + 16))


def _corpus(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a.yml").write_text(CORPUS)
    (folder / "b.yml").write_text("conversations:\n- - How are you?\n  - Fine, thanks.\n- - Bye\n  - 'True'\n")
    (folder / "notes.txt").write_text("not a corpus file")
    return folder


def test_chatterbot_pairs_are_consecutive_turns_deduplicated(tmp_path):
    pairs = chatterbot_pairs(_corpus(tmp_path / "english"))
    assert pairs == [("Hello", "Hi there"), ("What is AI?", "A field of computer science."),
                     ("A field of computer science.", "Tell me more."), ("yes", "no"),  # YAML's yes stays text
                     ("How are you?", "Fine, thanks."), ("Bye", "True")]


def test_chatterbot_split_is_seeded_and_loads_as_chat_rows(tmp_path):
    from pruning import TaskSpec
    from pruning.data import load_task

    folder = _corpus(tmp_path / "english")
    train, dev = chatterbot_chat(folder, tmp_path / "out", dev_share=1 / 3)
    rows = [json.loads(line) for path in (train, dev) for line in path.read_text().splitlines()]
    assert len(dev.read_text().splitlines()) == 2 and len(rows) == 6
    assert sorted((r["messages"][0]["content"], r["messages"][1]["content"]) for r in rows) == \
        sorted(chatterbot_pairs(folder))
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in rows)
    again = chatterbot_chat(folder, tmp_path / "again", dev_share=1 / 3)
    assert [p.read_text() for p in again] == [train.read_text(), dev.read_text()]
    other = chatterbot_chat(folder, tmp_path / "other", dev_share=1 / 3, seed=1)
    assert other[1].read_text() != dev.read_text()
    task = load_task(TaskSpec(train=str(train), dev=str(dev), problem="completion"))
    assert len(task.train) == 4 and task.dev[0].prompt[0][0] == "user"


def row(task, method, metric, seed=0, params=900, budget=1000, **extra):
    setting = TASKS[task]
    return {"task": task, "method": method, "seed": seed, "model": "m", "metric_name": setting.metric,
            "metric": metric, "trainable_params": params, "budget": budget, "retrain_step_s": 0.5,
            "search_wall_s": 10.0 if method == "peftsearch" else 0.0, "total_wall_s": 100.0, "peak_memory_mb": 700.0,
            "steps": setting.steps, "max_length": setting.max_length, "train_rows": 5000, "dev_rows": 200,
            "train_examples": 2000, **extra}


SETTINGS = {t: {"steps": s.steps, "max_length": s.max_length} for t, s in TASKS.items()}


def test_report_takes_a_loss_as_better_lower_and_declares_the_target_per_task():
    rows = [row("chat", "alllinear", 2.0), row("chat", "alllinear", 2.2, seed=1),
            row("chat", "peftsearch", 1.9), row("chat", "peftsearch", 2.1, seed=1), row("chat", "lora", 2.4),
            row("sst2-gen", "alllinear", 0.82), row("sst2-gen", "peftsearch", 0.80),
            row("sst2-gen", "peftsearch", 0.99, steps=5),  # another step budget: left out
            row("sst2-gen", "lora", 0.99, model="tiny")]  # another model: left out
    data, markdown = report(SimpleNamespace(rows=rows), "cmd", "m", SETTINGS)
    chat, sst2 = data["results"]["chat"], data["results"]["sst2-gen"]
    assert chat["peftsearch"]["lower_is_better"] and chat["peftsearch"]["mean"] == pytest.approx(2.0)
    assert chat["peftsearch"]["std"] == pytest.approx(0.1414, abs=1e-4)
    assert sst2["peftsearch"]["mean"] == pytest.approx(80.0) and not sst2["peftsearch"]["lower_is_better"]
    assert list(sst2) == ["alllinear", "peftsearch"] and data["left_out"] == 2
    targets = data["targets"]
    assert targets["chat: peftsearch >= alllinear"]["value"] == pytest.approx(0.1)  # 2.1 - 2.0: a lower loss
    assert targets["chat: peftsearch >= alllinear"]["met"]
    assert targets["sst2-gen: peftsearch >= alllinear"]["value"] == pytest.approx(-2.0)  # points
    assert not targets["sst2-gen: peftsearch >= alllinear"]["met"]
    assert data["versus"]["alllinear"]["chat"]["per_seed"] == {0: pytest.approx(0.1), 1: pytest.approx(0.1)}
    assert data["versus"]["lora"]["chat"]["gain"] == pytest.approx(0.4)
    assert data["tasks"]["sst2-gen"]["train_examples"] == 2000
    assert "| chat | peftsearch | loss 2.0000 ± 0.1414 (n=2) | 900 | 1,000 | 0.50 | 10 | 100 | 700 |" in markdown
    assert "| sst2-gen | 300 | 64 | 16 | 2,000 of 5,000 (seeded) | 200 | exact_match |" in markdown
    assert "- chat: peftsearch >= alllinear: +0.1 (target >= 0 (alllinear's loss minus peftsearch's)) — met" \
        in markdown
    assert "- sst2-gen: peftsearch >= alllinear: -2 (target >= 0 points (peftsearch minus alllinear)) — MISSED" \
        in markdown
    assert "Left out: 2 finished runs" in markdown


def test_a_search_over_the_budget_misses_the_target():
    rows = [row("chat", "alllinear", 2.0), row("chat", "peftsearch", 1.5, params=1001)]
    target = report(SimpleNamespace(rows=rows), "cmd", "m", SETTINGS)[0]["targets"]["chat: peftsearch >= alllinear"]
    assert target["value"] > 0 and not target["within_budget"] and not target["met"]


# --- runs on a tiny LLaMA -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> str:
    from tests.tiny import make_tiny_llama

    return str(make_tiny_llama(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture(scope="module")
def glue(tmp_path_factory) -> Path:
    """A GLUE folder whose SST-2 is the toy sentiment task (labels 0/1, as GLUE's)."""
    from tests.tiny import toy_examples

    folder = tmp_path_factory.mktemp("glue")
    (folder / "SST-2").mkdir()
    for split, n, seed in [("train", 96, 0), ("dev", 24, 1)]:
        rows = "".join(f"{text}\t{label}\n" for text, label in toy_examples(n, seed))
        (folder / "SST-2" / f"{split}.tsv").write_text("sentence\tlabel\n" + rows)
    return folder


@pytest.fixture(scope="module")
def task_data(tmp_path_factory, glue) -> dict[str, dict]:
    tmp = tmp_path_factory.mktemp("decoder-data")
    train, dev = chatterbot_chat(_corpus(tmp / "english"), tmp / "chat", dev_share=1 / 3)
    return {"sst2-gen": {"glue": "sst2", "data_dir": str(glue)}, "chat": {"train": str(train), "dev": str(dev)}}


def test_sst2_is_answered_in_words(llama, task_data):
    from bench.decoder import decoder_spec
    from pruning.data import Completion
    from pruning.data.loaders import load_task

    data = load_task(decoder_spec("sst2-gen", 0, llama, task_data["sst2-gen"], 3, 32).task)
    assert len(data.dev) == 24 and {c.completion for c in data.dev} == {" negative", " positive"}
    assert all(isinstance(c, Completion) and c.prompt.startswith("Review: ") for c in data.train)


@pytest.mark.slow
@pytest.mark.parametrize("task, method", [("sst2-gen", m) for m in METHODS] + [("chat", "peftsearch")])
def test_each_method_runs_on_a_tiny_llama(llama, task_data, task, method):
    from bench.decoder import run_job
    from bench.quality import lora_budget

    result = run_job({"task": task, "method": method, "seed": 0, "model": llama, "data": task_data[task],
                      "steps": 4, "max_length": 32})
    budget = lora_budget(llama)
    assert result["budget"] == budget == 4 * 8 * ((64 + 64) + (64 + 32))  # q, v of 4 layers; v 2 kv heads of 16
    assert result["metric_name"] == TASKS[task].metric and result["metric"] == result["metrics"][TASKS[task].metric]
    assert 0 < result["trainable_params"] <= budget
    if method == "alllinear":
        assert result["trainable_params"] >= 0.98 * budget
        assert {path.rsplit(".", 1)[-1] for path in result["lora_ranks"]} >= {"gate_proj", "down_proj", "o_proj"}
    if method == "lora":
        assert result["trainable_params"] == budget
    assert result["retrain_step_s"] == pytest.approx(result["retrain_wall_s"] / 4)
    assert result["peak_memory_mb"] > 0 and result["steps"] == 4 and result["max_length"] == 32


@pytest.mark.slow
def test_the_command_runs_a_child_stores_its_row_and_reports(llama, glue, tmp_path, monkeypatch):
    from bench.decoder import main

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    args = ["--model", llama, "--data-dir", str(glue), "--tasks", "sst2-gen", "--methods", "lora", "--seeds", "0",
            "--steps", "3", "--max-length", "32", "--cache-dir", str(tmp_path / "cache"),
            "--results", str(tmp_path / "results")]
    assert main(args) == 0
    rows = [json.loads(line) for line in (tmp_path / "results" / "decoder.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["method"] == "lora" and rows[0]["steps"] == 3
    assert rows[0]["train_rows"] == 96 and rows[0]["dev_rows"] == 24 and "commit" in rows[0]
    data = json.loads((tmp_path / "results" / "decoder.json").read_text())
    assert data["results"]["sst2-gen"]["lora"]["seeds"] == 1 and data["left_out"] == 0
    assert "| sst2-gen | lora | exact_match" in (tmp_path / "results" / "decoder.md").read_text()
    assert main(args) == 0  # resumed: nothing left to run
    assert len((tmp_path / "results" / "decoder.jsonl").read_text().splitlines()) == 1


def test_the_command_refuses_without_smollm2(monkeypatch, capsys, tmp_path):
    import pruning.bundled
    from bench.decoder import main

    monkeypatch.setattr(pruning.bundled, "bundled_path", lambda name: None)
    assert main(["--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "bench.decoder: SmolLM2-135M-Instruct is not installed: run `make decoder` first"
    assert not (tmp_path / "decoder.jsonl").exists()


@pytest.mark.slow
def test_the_gpu_script_times_a_lora_step_with_and_without_checkpointing_and_4bit(tmp_path):
    from bench.gpu import main

    assert main(["--device", "cpu", "--layers", "1", "--batch", "2", "--length", "16", "--steps", "1",
                 "--results", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "gpu.json").read_text())
    assert [(run["base_weights"], run["gradient_checkpointing"]) for run in data["runs"]] == [
        ("as stored", False), ("as stored", True), ("4-bit NF4", False), ("4-bit NF4", True)]
    assert data["shape"]["num_hidden_layers"] == 1 and data["shape"]["num_key_value_heads"] == 3
    # LoRA r=8 on q (576 -> 576) and v (576 -> 192, three key/value heads) of the one layer
    assert all(run["trainable_params"] == 8 * (576 + 576) + 8 * (576 + 192) for run in data["runs"])
    assert all(run["step_s"] > 0 and run["dtype"] == "fp32" for run in data["runs"])
    assert "| 4-bit NF4 | on | cpu | fp32 |" in (tmp_path / "gpu.md").read_text()
