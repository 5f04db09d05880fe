"""Fixtures of the engine tests: the tiny BERT (hidden 64, 4 layers, 4 heads) and the toy sentiment task, written
once per session, plus helpers to load fresh models, tokenise a fixed batch and build small search specs.

torch and transformers are imported inside the fixtures: the service tests share this file and their images have
no torch.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

# The tiny model's sizes (tests/tiny.py make_tiny_model defaults), used by hand-computed expectations.
HIDDEN, LAYERS, HEADS, INTERMEDIATE = 64, 4, 4, 128
# The tests' space (make_spec's: LoRA r=8 on q,v kept or removed whole; adapter d=16; prefix p=8; the product's
# default spreads LoRA over every projection at rank grain) on the tiny model, per unit:
LORA_PARAMS = 2 * 8 * (HIDDEN + HIDDEN)  # 2048
ADAPTER_PARAMS = HIDDEN * 16 + 16 + 16 * HIDDEN + HIDDEN  # 2128
PREFIX_PARAMS = 2 * 8 * HIDDEN  # 1024
UNIT_PARAMS = {"lora": LORA_PARAMS, "adapter": ADAPTER_PARAMS, "prefix": PREFIX_PARAMS}
HEAD_PARAMS = HIDDEN * 2 + 2  # classifier of 2 labels

SENTENCES = [
    "the movie was good",
    "a very boring plot and the actor was sad in this film",
    "it is quite fun",
    "the ending of this story was cold and dull",
]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """One intra-op thread: these models are tiny, and on a 2-core machine shared with other processes torch's
    spinning OpenMP threads make a one-second search take twenty. torch is not imported here for that."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def unit_size(key: str) -> int:
    return UNIT_PARAMS[key.split(".")[0]]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    import torch

    from tests.tiny import make_tiny_model

    torch.set_num_threads(1)  # see pytest_runtest_setup; tests that import torch only through the engine land here

    return str(make_tiny_model(tmp_path_factory.mktemp("tiny-model")))


@pytest.fixture(scope="session")
def toy_task(tmp_path_factory) -> tuple[str, str]:
    from tests.tiny import make_toy_task

    train, dev = make_toy_task(tmp_path_factory.mktemp("toy-task"))
    return str(train), str(dev)


@pytest.fixture(scope="session")
def tokenizer(tiny_model):
    from pruning.backbones import load_tokenizer

    return load_tokenizer(tiny_model)


@pytest.fixture(scope="session")
def load_bare(tiny_model, tokenizer):
    """A function returning a fresh copy of the tiny classifier (2 labels), in eval mode."""
    from pruning.backbones import load_model

    def load():
        return load_model(tiny_model, 2, "classification", tokenizer.pad_token_id)

    return load


@pytest.fixture(scope="session")
def batch(tokenizer):
    """SENTENCES tokenised and padded to the longest: rows 0 and 2 carry padding."""
    return dict(tokenizer(SENTENCES, padding=True, return_tensors="pt"))


@pytest.fixture(scope="session")
def make_spec(tiny_model, toy_task):
    """make_spec(**overrides) -> a SearchSpec small enough to search in about a second on the tiny model.

    Overrides name top-level fields, or nested ones with '__': make_spec(schedule__rounds=2, space__types=(...))."""
    from pruning import LoraSpec, ScheduleSpec, SearchSpec, SpaceSpec, TaskSpec, TrainSpec

    def make(**overrides) -> SearchSpec:
        spec = SearchSpec(
            model=tiny_model, task=TaskSpec(train=toy_task[0], dev=toy_task[1]), budget=8000,
            space=SpaceSpec(lora=LoraSpec(targets=("q", "v"), rank_step=0)),  # the sizes above
            schedule=ScheduleSpec(rounds=3, steps_per_round=3, eval_examples=16, learn_max_share=0),
            train=TrainSpec(steps=4, batch_size=8, lr=3e-3, eval_batch_size=32))
        nested: dict[str, dict] = {}
        for key, value in overrides.items():
            if "__" in key:
                section, name = key.split("__", 1)
                nested.setdefault(section, {})[name] = value
            else:
                spec = dataclasses.replace(spec, **{key: value})
        for section, values in nested.items():
            sub = getattr(spec, section)
            for name, value in values.items():
                if "__" in name:  # space__lora__rank
                    inner, leaf = name.split("__", 1)
                    sub = dataclasses.replace(sub, **{inner: dataclasses.replace(getattr(sub, inner),
                                                                                 **{leaf: value})})
                else:
                    sub = dataclasses.replace(sub, **{name: value})
            spec = dataclasses.replace(spec, **{section: sub})
        return spec

    return make


@dataclasses.dataclass
class SearchRun:
    spec: object
    result: object
    out: Path
    events: list
    logits: object  # the trained model's logits on `batch`, computed just before export
    bare_logits: object  # the untouched backbone's logits on `batch`


@pytest.fixture(scope="session")
def searched(tmp_path_factory, make_spec, batch, load_bare) -> SearchRun:
    """One whole search (default assignment) on the tiny model and toy task, shared by the search and export
    tests. `pruning.export.save` is wrapped to capture the trained model's logits as it is exported."""
    import torch

    import pruning.export
    from pruning import search

    spec = make_spec()
    out = tmp_path_factory.mktemp("search") / "out"
    events: list = []
    captured: dict = {}
    original = pruning.export.save

    def save(out_dir, model, *args, **kwargs):
        with torch.no_grad():
            captured["logits"] = model.eval()(**batch).detach().clone()
        return original(out_dir, model, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pruning.export, "save", save)
        result = search(spec, out, on_progress=events.append)
    with torch.no_grad():
        bare = load_bare()(**batch).logits
    return SearchRun(spec, result, out, events, captured["logits"], bare)
