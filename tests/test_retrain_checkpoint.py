"""Checkpoints of the retrain (issue 10): a search or a fit cancelled mid-retrain resumes from the retrain's last
checkpoint, runs only the steps after it, keeps its progress counts right, and ends with the very weights of a run
that was never interrupted (the batch stream, the optimizer and the random generators all continue)."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from safetensors.torch import load_file

import pruning
from pruning import Cancelled, search
from pruning.checkpoint import CheckpointEvery
from pruning.export import WEIGHTS
from pruning.train import Encoded, shuffled_batches
from tests.helpers import stop_after

EVERY_3_STEPS = CheckpointEvery(steps=3, seconds=None)


def retrain_steps(events) -> list[int]:
    return [e.step for e in events if e.kind == "step" and e.phase == "retrain"]


def assert_same_model(out_a, out_b, tiny_model, batch) -> None:
    weights_a, weights_b = load_file(out_a / WEIGHTS), load_file(out_b / WEIGHTS)
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    with torch.no_grad():
        logits = [pruning.load(out, tiny_model)(**batch) for out in (out_a, out_b)]
    assert torch.equal(*logits)


def test_skipping_batches_continues_the_stream_where_it_stopped():
    data = Encoded([[1, 2, 3][: 1 + i % 3] for i in range(10)], None, [float(i) for i in range(10)],
                   "regression")

    def labels(stream, n):
        return [b["labels"].tolist() for b in itertools.islice(stream, n)]

    whole = labels(shuffled_batches(data, 4, 7, 0, torch.device("cpu")), 12)  # several epochs, batches across them
    assert labels(shuffled_batches(data, 4, 7, 0, torch.device("cpu"), skip=5), 7) == whole[5:]


def test_a_search_cancelled_mid_retrain_resumes_from_the_retrain_checkpoint(make_spec, tmp_path, tiny_model,
                                                                              batch):
    spec = make_spec(train__steps=10)  # 3 rounds of 3 steps, then 10 retrain steps
    whole = search(spec, tmp_path / "whole")
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    first: list = []
    with pytest.raises(Cancelled):  # 9 search steps and 5 retrain steps; the retrain checkpointed after step 3
        search(spec, out, on_progress=first.append, should_stop=stop_after(9 + 5), checkpoint_dir=ckpt,
               checkpoint_every=EVERY_3_STEPS)
    assert retrain_steps(first) == [1, 2, 3, 4, 5]
    assert json.loads((ckpt / "retrain.json").read_text())["step"] == 3
    assert sorted(p.name for p in ckpt.glob("*.safetensors")) == ["retrain-3.safetensors", "weights-3.safetensors"]

    second: list = []
    resumed = search(spec, out, on_progress=second.append, checkpoint_dir=ckpt, checkpoint_every=EVERY_3_STEPS)
    assert retrain_steps(second) == list(range(4, 11))  # the 7 steps after the checkpoint, no search step
    assert [e.kind for e in second if e.kind == "step" and e.phase != "retrain"] == []
    assert any(e.phase == "retrain" and "resuming after step 3" in e.message for e in second if e.kind == "phase")
    steps = [e for e in second if e.kind == "step"]
    planned = 9 + 10
    assert all(e.total_steps == planned for e in second)
    assert [e.done_steps for e in steps] == list(range(9 + 3 + 1, planned + 1))
    assert steps[0].eta_s is None and steps[-1].eta_s == 0  # the pace of this process's steps
    assert json.loads((ckpt / "retrain.json").read_text())["step"] == 10  # the last step is checkpointed too

    assert resumed.metrics == whole.metrics and resumed.trainable_params == whole.trainable_params
    assert_same_model(tmp_path / "whole", out, tiny_model, batch)


def test_a_fit_cancelled_mid_training_resumes_from_its_checkpoint(make_spec, tmp_path, tiny_model, batch):
    spec = make_spec(train__steps=7)
    units = ["lora.0", "adapter.2", "prefix.3"]
    whole = pruning.fit(spec, tmp_path / "whole", units)
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    with pytest.raises(Cancelled):
        pruning.fit(spec, out, units, should_stop=stop_after(5), checkpoint_dir=ckpt, checkpoint_every=EVERY_3_STEPS)
    events: list = []
    resumed = pruning.fit(spec, out, units, on_progress=events.append, checkpoint_dir=ckpt,
                          checkpoint_every=EVERY_3_STEPS)
    assert retrain_steps(events) == [4, 5, 6, 7]
    assert resumed.metrics == whole.metrics
    assert_same_model(tmp_path / "whole", out, tiny_model, batch)


def test_a_retrain_checkpoint_of_another_configuration_is_refused(make_spec, tmp_path):
    spec, ckpt = make_spec(train__steps=4), tmp_path / "ckpt"
    with pytest.raises(Cancelled):
        pruning.fit(spec, tmp_path / "a", ["lora.0"], should_stop=stop_after(3), checkpoint_dir=ckpt,
                    checkpoint_every=CheckpointEvery(steps=1, seconds=None))
    with pytest.raises(ValueError, match=r"retrain checkpoint in .*ckpt was written for a different spec or "
                                         r"configuration"):
        pruning.fit(spec, tmp_path / "b", ["lora.1"], checkpoint_dir=ckpt)
