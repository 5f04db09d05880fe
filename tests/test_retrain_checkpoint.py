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
from pruning.train import Encoded, batch_indices, length_grouped_batch_indices, shuffled_batches
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


def test_batches_by_length_cover_each_epoch_pad_little_and_skip_like_random_ones():
    lengths = [1 + (i * 7) % 60 for i in range(203)]  # 203 rows of 1-60 tokens, batches of 8: 3 rows carried
    grouped = length_grouped_batch_indices(lengths, 8, seed=3, window=10)
    epoch = list(itertools.islice(grouped, 203 // 8))
    rows = [i for batch in epoch for i in batch]
    assert len(rows) == len(set(rows)) == 200 and all(len(batch) == 8 for batch in epoch)
    again = list(itertools.islice(length_grouped_batch_indices(lengths, 8, seed=3, window=10), 2 * len(epoch)))
    assert again[:len(epoch)] == epoch  # seeded
    assert set(range(203)) - set(rows) <= {i for batch in again[len(epoch):] for i in batch}  # carried, not lost

    def padded(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches) / sum(lengths[i] for b in batches for i in b)

    assert padded(epoch) < 1.2 < 1.5 < padded(list(itertools.islice(batch_indices(203, 8, 3), 203 // 8)))
    # not long to short: the batches' order is shuffled, not the windows' sorting order
    longest = [max(lengths[i] for i in batch) for batch in epoch]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)
    data = Encoded([[5] * n for n in lengths], None, [float(i) for i in range(203)], "regression")
    whole = [b["labels"].tolist() for b in itertools.islice(
        shuffled_batches(data, 8, 3, 0, torch.device("cpu"), by_length=True), 30)]
    skipped = [b["labels"].tolist() for b in itertools.islice(
        shuffled_batches(data, 8, 3, 0, torch.device("cpu"), skip=26, by_length=True), 4)]
    assert skipped == whole[26:]  # a resumed training draws the batches it would have drawn
    few = list(itertools.islice(length_grouped_batch_indices([3, 1, 2], 8, seed=0), 4))
    assert all(sorted(batch) == [0, 1, 2] for batch in few)  # fewer rows than a batch: all of them, once each
    with pytest.raises(ValueError, match="no rows"):
        next(length_grouped_batch_indices([], 8, seed=0))


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
