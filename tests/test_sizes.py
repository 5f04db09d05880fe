"""pruning.sizes: the supernet's and the backbone's parameter counts from config.json alone equal what the engine
measures on the built models, for every family of the architecture maps and spaces of every module type; the
budget check at the CLI (before torch) names `budget` and its maximum."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pruning.sizes import (
    backbone_params,
    budget_limit,
    check_budget,
    check_problem,
    max_share,
    read_config,
    supernet_params,
)
from pruning.spec import AdapterSpec, LoraSpec, PrefixSpec, SpaceSpec, SpecError, budget_params

ROOT = Path(__file__).resolve().parents[1]

SPACES = [
    SpaceSpec(),  # lora (q, v) + adapter + prefix
    SpaceSpec(types=("lora",), lora=LoraSpec(rank=4, targets=("q", "k", "v", "o", "ffn_in", "ffn_out"))),
    SpaceSpec(types=("lora",), lora=LoraSpec(rank=6, targets=("q", "k", "v", "o", "ffn_in", "ffn_out"),
                                             rank_step=2)),
    SpaceSpec(types=("lora", "prefix"), lora=LoraSpec(rank=3, targets=("o", "ffn_out")), prefix=PrefixSpec(length=5)),
    SpaceSpec(types=("adapter",), adapter=AdapterSpec(size=7)),
    SpaceSpec(types=("prefix", "adapter"), prefix=PrefixSpec(length=3), adapter=AdapterSpec(size=1)),
]


def _bert(**kw):
    from transformers import BertConfig

    return BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                      intermediate_size=48, max_position_embeddings=40, **kw)


def _roberta(**kw):
    from transformers import RobertaConfig

    return RobertaConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=40, max_position_embeddings=42, type_vocab_size=1, **kw)


def _xlmr(**kw):
    from transformers import XLMRobertaConfig

    return XLMRobertaConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=40, max_position_embeddings=42, **kw)


def _llama(**kw):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                       num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, **kw)


def _llama_head_dim(**kw):  # head_dim set apart from hidden / heads, with biases everywhere
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=300, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=1, head_dim=16, attention_bias=True,
                       mlp_bias=True, pad_token_id=0, **kw)


def _qwen2(**kw):
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, **kw)


def _mistral(**kw):
    from transformers import MistralConfig

    return MistralConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=1, pad_token_id=0, **kw)


FAMILIES = {"bert": _bert, "roberta": _roberta, "xlm-roberta": _xlmr, "llama": _llama,
            "llama-head-dim": _llama_head_dim, "qwen2": _qwen2, "mistral": _mistral}


def _saved_config(config, path: Path) -> dict:
    """The config as config.json holds it (what the service and the CLI read)."""
    config.save_pretrained(path)
    return json.loads((path / "config.json").read_text())


def _model(config):
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config)


@pytest.mark.parametrize("family", FAMILIES)
def test_counts_from_config_equal_the_built_supernet_and_backbone(family, tmp_path):
    from pruning.arch import architecture_of, backbone_parameter_count
    from pruning.supernet import Supernet

    config = FAMILIES[family](num_labels=3)
    saved = _saved_config(config, tmp_path)
    model = _model(config)
    assert backbone_params(saved) == backbone_parameter_count(model, architecture_of(model))
    for space in SPACES:
        measured = Supernet(_model(config), space).unit_params()
        assert supernet_params(saved, space) == sum(measured.values()), (family, space)


def test_the_tiny_bert_on_disk_and_the_bundled_name(tiny_model, load_bare):
    from pruning.arch import architecture_of, backbone_parameter_count
    from pruning.supernet import Supernet

    config = read_config(tiny_model)
    model = load_bare()
    assert backbone_params(config) == backbone_parameter_count(model, architecture_of(model))
    for space in SPACES:
        assert supernet_params(config, space) == Supernet(load_bare(), space).peft_params()
    assert read_config(str(Path(tiny_model) / "no-such-folder")) is None


def test_rank_step_changes_the_grain_not_the_maximum(tiny_model):
    config = read_config(tiny_model)
    lora = LoraSpec(targets=("q", "k", "v", "o", "ffn_in", "ffn_out"))
    whole = supernet_params(config, SpaceSpec(types=("lora",), lora=lora))
    stepped = supernet_params(config, SpaceSpec(types=("lora",), lora=dataclasses.replace(lora, rank_step=2)))
    assert whole == stepped > 0


def test_unknown_families_and_module_types_have_no_size():
    assert supernet_params({"model_type": "gpt2", "hidden_size": 8}, SpaceSpec()) is None
    assert backbone_params({"model_type": "t5"}) is None
    incomplete = {"model_type": "bert", "hidden_size": 32}  # no layer count
    assert budget_limit(incomplete, SpaceSpec()) is None
    check_budget("100%", incomplete, SpaceSpec())  # nothing to check against: no error
    check_budget(10**9, None, SpaceSpec())

    class Plugin:  # a space naming a module type registered by a plugin
        types = ("lora", "mine")
        lora = LoraSpec()

    assert supernet_params(_bert_config(), Plugin()) is None


def _bert_config() -> dict:
    return {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4,
            "intermediate_size": 48, "vocab_size": 300, "max_position_embeddings": 40, "type_vocab_size": 2}


def test_a_budget_above_the_supernet_names_budget_and_the_maximum():
    config, space = _bert_config(), SpaceSpec()
    supernet, backbone = budget_limit(config, space)
    check_budget(supernet, config, space)  # the whole supernet itself is a budget (a search of no pruning)
    with pytest.raises(SpecError) as err:
        check_budget(supernet + 1, config, space)
    assert err.value.field == "budget"
    assert f"at most {supernet:,} parameters" in err.value.message and f"got {supernet + 1:,}" in err.value.message
    share = max_share(supernet, backbone)
    assert f"({share}% of the backbone)" in err.value.message
    check_budget(f"{share}%", config, space)  # the share it names is accepted
    with pytest.raises(SpecError, match=r"got 100% of [\d,]+ backbone parameters"):
        check_budget("100%", config, space)
    with pytest.raises(SpecError) as err:
        check_budget(f"{supernet // 1000 + 1}k", config, space, field="search.budget")
    assert err.value.field == "search.budget"


@pytest.mark.parametrize("supernet,backbone", [(1, 10**9), (7_351, 4_386_178), (123_457, 1_000_000), (5, 5)])
def test_the_named_share_is_the_largest_that_fits(supernet, backbone):
    share = max_share(supernet, backbone)
    assert "e" not in share
    if share != "0":
        assert budget_params(f"{share}%", backbone) <= supernet
    bigger = float(share) + 0.0001
    if bigger <= 100:
        assert budget_params(f"{bigger:.4f}%", backbone) > supernet or float(share) == 100


def test_the_cli_refuses_a_budget_above_the_supernet_before_loading_torch(tiny_model, toy_task, tmp_path):
    supernet = supernet_params(read_config(tiny_model), SpaceSpec())
    code = ("import sys\nfrom pruning.cli import main\ncode = main(sys.argv[1:])\n"
            "assert 'torch' not in sys.modules, 'torch was loaded'\nsys.exit(code)")
    run = subprocess.run([sys.executable, "-c", code, "--model", tiny_model, "--train", toy_task[0], "--dev",
                          toy_task[1], "--budget", str(supernet + 1), "--out", str(tmp_path / "out")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert f"budget: at most {supernet:,} parameters" in run.stderr
    assert not (tmp_path / "out").exists()


def test_completion_is_refused_for_encoders_and_taken_by_decoders(tiny_model, tmp_path):
    from pruning.backbones import load_model
    from tests.tiny import make_tiny_llama

    with pytest.raises(SpecError, match="an encoder: it learns classification or regression, not completion") as err:
        check_problem("completion", read_config(tiny_model))
    assert err.value.field == "task.problem"
    with pytest.raises(SpecError, match="not completion"):  # the engine's own entry, before any weight is read
        load_model(tiny_model, 0, "completion")
    llama = read_config(str(make_tiny_llama(tmp_path / "llama")))
    for problem in ("classification", "regression", "completion"):
        check_problem(problem, llama)
        check_problem(problem, {"model_type": "gpt2"})  # no map: nothing is known, nothing refused
    check_problem("regression", read_config(tiny_model))


def test_the_cli_refuses_completion_on_an_encoder_before_loading_torch(tiny_model, tmp_path):
    from tests.tiny import make_completion_task

    train, dev = make_completion_task(tmp_path / "data", n_train=8, n_dev=4)
    code = ("import sys\nfrom pruning.cli import main\ncode = main(sys.argv[1:])\n"
            "assert 'torch' not in sys.modules, 'torch was loaded'\nsys.exit(code)")
    run = subprocess.run([sys.executable, "-c", code, "--model", tiny_model, "--train", str(train), "--dev",
                          str(dev), "--problem", "completion", "--out", str(tmp_path / "out")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert "task.problem: a bert model is an encoder" in run.stderr
    assert not (tmp_path / "out").exists()
