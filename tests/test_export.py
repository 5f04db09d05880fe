"""The result directory: its files, reloading the exact model with pruning.load, re-scoring with
pruning.evaluate, and stock peft reading the LoRA part."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from conftest import HEAD_PARAMS, LAYERS, unit_size
from safetensors.torch import load_file

import pruning
from pruning import SpaceSpec, search
from pruning.export import CONFIG, WEIGHTS, read_config

FILES = {"adapter_config.json", "adapter_model.safetensors", "peftsearch_config.json",
         "peftsearch_weights.safetensors", "trace.json", "result.json", "README.md"}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        out = model.eval()(**batch)
    return out.logits if hasattr(out, "logits") else out


def stock_peft(base: str, out):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=2)
        return PeftModel.from_pretrained(model, str(out)).eval()


def test_result_directory_files(searched):
    assert {p.name for p in searched.out.iterdir()} == FILES
    assert not [p for p in searched.out.rglob("*") if p.suffix in PICKLE_SUFFIXES]
    for path in searched.out.iterdir():  # nor pickles under another name (protocol 2+ or torch.save's zip)
        assert not path.read_bytes()[:4].startswith((b"\x80", b"PK\x03\x04")), path.name
    weights = load_file(searched.out / WEIGHTS)
    assert sum(t.numel() for t in weights.values()) == searched.result.trainable_params + HEAD_PARAMS
    readme = (searched.out / "README.md").read_text()
    assert readme.startswith("# peftsearch result")
    assert f"trainable PEFT parameters: {searched.result.trainable_params:,}" in readme


def test_configuration_lists_modules_and_sizes_per_layer(searched):
    config = read_config(searched.out)
    assert config == json.loads(json.dumps(searched.result.configuration))
    units = config["units"]
    assert config["trainable_params"] == sum(unit_size(k) for k in units) == searched.result.trainable_params
    assert config["metrics"] == searched.result.metrics
    assert config["architecture"] == "bert" and config["problem"] == "classification"
    assert config["labels"] == ["0", "1"] and config["metric_names"] == ["accuracy", "f1"]
    assert [entry["layer"] for entry in config["layers"]] == list(range(LAYERS))
    described = {"lora": lambda layer: {"ranks": {"q": 8, "v": 8}, "alpha": 16.0, "paths": {
                     "q": f"bert.encoder.layer.{layer}.attention.self.query",
                     "v": f"bert.encoder.layer.{layer}.attention.self.value"}},
                 "adapter": lambda layer: {"size": 16, "activation": "relu"},
                 "prefix": lambda layer: {"length": 8, "heads": 4}}
    for entry in config["layers"]:
        layer = entry["layer"]
        expected = {k.split(".")[0]: described[k.split(".")[0]](layer) for k in units if k.endswith(f".{layer}")}
        assert entry["modules"] == expected
    assert config["lora_ranks"] == {
        f"bert.encoder.layer.{k.split('.')[1]}.attention.self.{p}": 8
        for k in units if k.startswith("lora.") for p in ("query", "value")}


def test_load_reproduces_the_trained_models_logits(searched, tiny_model, batch):
    model = pruning.load(searched.out, tiny_model)
    assert model.unit_keys() == searched.result.configuration["units"]
    assert not model.training
    reloaded = logits(model, batch)
    assert torch.equal(reloaded, searched.logits)
    assert not torch.equal(reloaded, searched.bare_logits)  # the trained units and head do matter
    # the base model's path is recorded: it may be left out
    assert torch.equal(logits(pruning.load(searched.out), batch), searched.logits)


def test_evaluate_equals_the_result_metrics(searched, tiny_model):
    assert pruning.evaluate(searched.out, tiny_model) == searched.result.metrics


def test_stock_peft_loads_the_lora_weights(searched, tiny_model):
    lora_units = [k for k in searched.result.configuration["units"] if k.startswith("lora.")]
    if not lora_units:
        pytest.skip("this search kept no LoRA unit")  # see the LoRA-only test below for the full check
    ours = dict(pruning.load(searched.out, tiny_model).model.named_parameters())
    theirs = {n.removeprefix("base_model.model."): p for n, p in stock_peft(tiny_model, searched.out).named_parameters()
              if ".lora_" in n}
    assert len(theirs) == 4 * len(lora_units)  # A and B of query and value
    for name, param in theirs.items():
        assert torch.equal(param, ours[name]), name


@pytest.fixture(scope="module")
def lora_only(make_spec, tmp_path_factory, batch):
    spec = make_spec(space=SpaceSpec(types=("lora",)), budget=5000, schedule__rounds=2)
    out = tmp_path_factory.mktemp("lora-only") / "out"
    result = search(spec, out)
    return spec, result, out


def test_stock_peft_reproduces_a_lora_only_configuration(lora_only, tiny_model, batch):
    spec, result, out = lora_only
    assert result.trainable_params <= 5000
    units = result.configuration["units"]
    assert units and all(k.startswith("lora.") for k in units)
    ours = pruning.load(out, tiny_model)
    peft_model = stock_peft(tiny_model, out)
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["r"] == 8 and adapter_config["lora_alpha"] == 16.0
    assert sorted(adapter_config["target_modules"]) == sorted(result.configuration["lora_ranks"])
    assert adapter_config["modules_to_save"] == ["classifier"]
    # B was trained: the check below compares real LoRA terms, not zeros
    ours_params = dict(ours.model.named_parameters())
    assert any(torch.count_nonzero(p) for n, p in ours_params.items() if ".lora_B." in n)
    for name, param in peft_model.named_parameters():
        if ".lora_" in name or ".modules_to_save." in name:
            source = name.removeprefix("base_model.model.").replace(".modules_to_save.default.", ".")
            assert torch.equal(param, ours_params[source]), name
    torch.testing.assert_close(logits(peft_model, batch), logits(ours, batch), rtol=0, atol=1e-6)


def test_export_and_load_of_a_hand_made_supernet(tiny_model, tokenizer, load_bare, batch, tmp_path, make_spec):
    """Export with every unit type and non-trivial weights (LoRA B, adapter up, prefixes all non-zero):
    pruning.load rebuilds the same function, and pruning.evaluate scores what the model predicts."""
    from pruning import export
    from pruning.data import load_task
    from pruning.supernet import Supernet
    from pruning.train import encode
    from pruning.train import evaluate as evaluate_model

    spec = make_spec()
    task = load_task(spec.task)
    supernet = Supernet(load_bare(), spec.space, ["lora.0", "adapter.0", "prefix.1", "adapter.2", "lora.3"])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in supernet.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.5)
    supernet.eval()
    expected = logits(supernet, batch)
    dev = encode(tokenizer, task.dev, spec.train.max_length, task.problem)
    metrics = evaluate_model(supernet, dev, task.metric_names, 16, tokenizer.pad_token_id, torch.device("cpu"))
    assert 0 < metrics["f1"] < 1  # not a constant prediction: a meaningful comparison

    out = tmp_path / "out"
    config = export.save(out, supernet, spec=spec, task=task, metrics=metrics, records=[], trace_extra={})
    assert config["units"] == ["lora.0", "adapter.0", "prefix.1", "adapter.2", "lora.3"]
    assert config["pruned_layers"] == []
    loaded = pruning.load(out, tiny_model)
    assert torch.equal(logits(loaded, batch), expected)
    assert pruning.evaluate(out, tiny_model) == metrics
    assert json.loads((out / "trace.json").read_text()) == {"rounds": []}


def test_export_without_lora_writes_no_peft_files(tiny_model, load_bare, batch, tmp_path, make_spec):
    from pruning import export
    from pruning.data import load_task
    from pruning.supernet import Supernet

    spec = make_spec()
    supernet = Supernet(load_bare(), spec.space, ["adapter.1", "prefix.1"])
    with torch.no_grad():
        supernet.unit("adapter.1").up.weight.fill_(0.1)
    expected = logits(supernet, batch)
    out = tmp_path / "out"
    config = export.save(out, supernet, spec=spec, task=load_task(spec.task), metrics={"accuracy": 0.5},
                         records=[], trace_extra={})
    assert config["lora_ranks"] == {} and config["pruned_layers"] == [0, 2, 3]
    assert {p.name for p in out.iterdir()} == {CONFIG, WEIGHTS, "trace.json", "README.md"}
    assert torch.equal(logits(pruning.load(out, tiny_model), batch), expected)


def test_read_config_errors(tmp_path, searched):
    with pytest.raises(FileNotFoundError, match=f"is not a peftsearch result directory \\(no {CONFIG}\\)"):
        read_config(tmp_path)
    config = json.loads((searched.out / CONFIG).read_text())
    (tmp_path / CONFIG).write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(ValueError, match="format version 99 is not 1"):
        read_config(tmp_path)


# --- a base checkpoint that lacks weights; what stock peft loads, and says ---------------------------------------


@pytest.fixture(scope="module")
def poolerless(tiny_model, tmp_path_factory):
    """The tiny model without its pooler weights: transformers initialises the pooler randomly at every load."""
    import shutil

    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("poolerless") / "model"
    shutil.copytree(tiny_model, path)
    state = load_file(path / "model.safetensors")
    save_file({k: v for k, v in state.items() if "pooler" not in k}, path / "model.safetensors",
              metadata={"format": "pt"})
    return str(path)


def test_a_result_on_a_checkpoint_missing_weights_reloads_exactly(poolerless, make_spec, tmp_path, batch):
    import dataclasses

    spec = dataclasses.replace(make_spec(space=SpaceSpec(types=("lora",)), budget=5000, schedule__rounds=2),
                               model=poolerless)
    out = tmp_path / "out"
    result = search(spec, out)
    assert {"model.bert.pooler.dense.weight", "model.bert.pooler.dense.bias"} <= set(load_file(out / WEIGHTS))
    # no seeding between the calls: the pooler comes from the result, not from the random state
    torch.manual_seed(1)
    first = pruning.evaluate(out)
    torch.manual_seed(2)
    second = pruning.evaluate(out)
    assert first == second == result.metrics
    torch.manual_seed(3)
    ours = pruning.load(out)
    assert torch.equal(logits(ours, batch), logits(pruning.load(out), batch))
    # stock peft gets the pooler too (modules_to_save), so it reproduces the searched model
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["modules_to_save"] == ["classifier", "bert.pooler.dense"]
    torch.testing.assert_close(logits(stock_peft(poolerless, out), batch), logits(ours, batch), rtol=0, atol=1e-6)


class _Logits(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, **batch):
        return self.model(**batch).logits


def test_the_stock_peft_part_and_its_score_are_stated(searched, tiny_model, toy_task, tokenizer):
    from pruning import TaskSpec
    from pruning.data import load_task
    from pruning.train import encode, evaluate

    stock = searched.result.configuration["stock_peft"]
    units = searched.result.configuration["units"]
    dropped = [k for k in units if not k.startswith("lora.")]
    assert dropped and any(k.startswith("lora.") for k in units), units  # this search keeps a mix
    assert stock["loads"] is True and stock["complete"] is False and stock["dropped_units"] == dropped
    assert stock["full_metric"] == searched.result.metric
    # the stated score is what stock peft's model really scores on dev
    task = load_task(TaskSpec(train=toy_task[0], dev=toy_task[1]))
    dev = encode(tokenizer, task.dev, searched.spec.train.max_length, "classification")
    scored = evaluate(_Logits(stock_peft(tiny_model, searched.out)), dev, task.metric_names, 32,
                      tokenizer.pad_token_id, torch.device("cpu"))
    assert stock["metric"] == scored["accuracy"]
    readme = (searched.out / "README.md").read_text()
    assert readme.splitlines()[2].startswith("**Warning: Stock peft reproduces only part of this model")
    assert f"alone scores accuracy {stock['metric']:.4f} on dev" in readme


def test_a_lora_only_result_says_stock_peft_loads_it_all(lora_only):
    _, result, out = lora_only
    stock = result.configuration["stock_peft"]
    assert stock["complete"] is True and stock["metric"] == result.metric and stock["dropped_units"] == []
    assert "Warning" not in (out / "README.md").read_text()


def test_the_result_records_a_portable_base_model_name(searched, tiny_model):
    config = read_config(searched.out)
    assert config["base_model"] == "tiny-model0" and config["base_model_path"] == tiny_model
    adapter_config = json.loads((searched.out / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "tiny-model0"


def test_a_bundled_model_is_recorded_by_its_name(monkeypatch, tiny_model):
    import sys
    import types

    from pruning.backbones import portable_name
    from pruning.bundled import BUNDLED_MODELS

    package = types.ModuleType("fake_bundle")
    package.get_model_path = lambda: tiny_model
    monkeypatch.setitem(sys.modules, "fake_bundle", package)
    monkeypatch.setitem(BUNDLED_MODELS, "tiny-bundled", "fake_bundle")
    assert portable_name(tiny_model) == "tiny-bundled"
    assert portable_name("some-org/some-model") == "some-org/some-model"


def test_evaluate_scores_a_data_file_with_the_results_label_map(searched, tiny_model, toy_task, tmp_path):
    from pathlib import Path

    from pruning.data import DataError

    rows = Path(toy_task[1]).read_text().splitlines()
    positives = tmp_path / "positives.csv"  # one class only: indices must come from the result, not this file
    positives.write_text("\n".join([rows[0], *[r for r in rows[1:] if r.endswith(",1")]]) + "\n")
    scored = pruning.evaluate(searched.out, tiny_model, data=toy_task[1])
    assert scored == searched.result.metrics
    only = pruning.evaluate(searched.out, tiny_model, data=positives)
    assert set(only) == {"accuracy", "f1"} and 0 <= only["accuracy"] <= 1
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nfine words,1\nodd words,7\n")
    with pytest.raises(DataError, match=r"bad.csv:3: label \"7\" is not one of the result's labels: \"0\", \"1\""):
        pruning.evaluate(searched.out, tiny_model, data=bad)


def test_a_hub_cache_snapshot_is_recorded_by_its_hub_id(tmp_path):
    from pruning.backbones import portable_name

    snapshot = tmp_path / "hub" / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots" / "8b3219a9"
    snapshot.mkdir(parents=True)
    assert portable_name(str(snapshot)) == "sentence-transformers/all-MiniLM-L6-v2"


def test_a_folder_of_the_same_name_elsewhere_does_not_replace_the_recorded_base(searched, tmp_path, monkeypatch):
    from pruning.export import read_config, recorded_base

    (tmp_path / "tiny-model0").mkdir()  # another model's folder, named like the searched one
    monkeypatch.chdir(tmp_path)
    config = read_config(searched.out)
    assert recorded_base(config) == config["base_model_path"]
    assert recorded_base({**config, "base_model_path": str(tmp_path / "gone")}) == "tiny-model0"


def test_merge_writes_a_plain_transformers_model_that_computes_the_same(lora_only, tiny_model, batch, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from peftsearch.cli import main

    _, result, out = lora_only
    assert main(["merge", str(out), str(tmp_path / "merged")]) == 0
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")
    assert not [n for n, _ in merged.named_parameters() if "lora_" in n]
    assert merged.config.id2label == {0: "0", 1: "1"}
    assert merged.num_parameters() == AutoModelForSequenceClassification.from_pretrained(tiny_model).num_parameters()
    torch.testing.assert_close(logits(merged, batch), logits(pruning.load(out), batch), rtol=0, atol=1e-5)


def test_merge_refuses_a_result_that_kept_more_than_lora(searched, tmp_path, capsys):
    from peftsearch.cli import main

    kept = [k for k in searched.result.configuration["units"] if not k.startswith("lora.")]
    assert kept  # the default space's search keeps adapters or prefixes on this toy task
    assert main(["merge", str(searched.out), str(tmp_path / "merged")]) == 2
    assert f"cannot be merged: the search kept {', '.join(kept)}" in capsys.readouterr().err
    assert not (tmp_path / "merged").exists()
