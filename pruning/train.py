"""Tokenised batches, the training loop and evaluation: the same code for search rounds, warm-up and retraining.

CUDA when present (bf16 autocast), CPU otherwise. Batches are padded on the right to their longest sequence,
and evaluation sorts examples by length first, which on CPU saves most of the padding work. A completion task
(a decoder language model) learns its completions' tokens only: the prompt's labels are IGNORE, and the model
computes its vocabulary's logits only where they are scored (`scored_positions`): on SmolLM2 the output layer is a
fifth of a token's forward, and a label answer is one or two tokens of a sequence.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .data import Completion, Example, compute_metrics

if TYPE_CHECKING:
    from .checkpoint import TrainCheckpoint


IGNORE = -100  # the label of a token the loss skips (a prompt's, padding), as transformers has it
# rows sorted together by length: 50 batches' worth, as transformers' LengthGroupedSampler sorts its megabatches
LENGTH_GROUP_WINDOW = 50


@dataclass
class Encoded:
    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: list[float] | list[list[int]]  # per example; completion: per token, IGNORE on the prompt
    problem: str
    eos_id: int | None = None  # completion: the token that ends an answer

    def __len__(self) -> int:
        return len(self.input_ids)

    def subset(self, indices: list[int]) -> Encoded:
        return Encoded([self.input_ids[i] for i in indices],
                       None if self.token_type_ids is None else [self.token_type_ids[i] for i in indices],
                       [self.labels[i] for i in indices], self.problem, self.eos_id)

    def prompt_length(self, i: int) -> int:
        """Completion: where example i's completion begins."""
        return next(t for t, label in enumerate(self.labels[i]) if label != IGNORE)


def encode(tokenizer, examples: list[Example] | list[Completion], max_length: int, problem: str) -> Encoded:
    if problem == "completion":
        from .completion import encode_completions

        return encode_completions(tokenizer, examples, max_length)
    texts = [e.text for e in examples]
    pairs = [e.text_pair for e in examples] if examples and examples[0].text_pair is not None else None
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
    return Encoded(enc["input_ids"], enc.get("token_type_ids"), [e.label for e in examples], problem)


def collate(data: Encoded, indices: list[int], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    width = max(len(data.input_ids[i]) for i in indices)
    ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(indices), width), dtype=torch.long)
    types = torch.zeros((len(indices), width), dtype=torch.long) if data.token_type_ids is not None else None
    tokens = data.problem == "completion"  # labels per token, IGNORE on the padding
    labels = torch.full((len(indices), width), IGNORE, dtype=torch.long) if tokens else torch.tensor(
        [data.labels[i] for i in indices], dtype=torch.float if data.problem == "regression" else torch.long)
    for row, i in enumerate(indices):
        n = len(data.input_ids[i])
        ids[row, :n] = torch.tensor(data.input_ids[i])
        mask[row, :n] = 1
        if types is not None:
            types[row, :n] = torch.tensor(data.token_type_ids[i])
        if tokens:
            labels[row, :n] = torch.tensor(data.labels[i])
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if types is not None:
        batch["token_type_ids"] = types
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def shuffled_batches(data: Encoded, batch_size: int, seed: int, pad_id: int, device: torch.device,
                     skip: int = 0, by_length: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Endless batches, reshuffled every epoch with a seeded generator (`by_length`: of rows of similar lengths,
    see length_grouped_batch_indices). `skip` drops the first batches without collating them: a training resumed
    after `skip` steps goes on with the very batches it would have drawn."""
    rows = length_grouped_batch_indices([len(row) for row in data.input_ids], batch_size, seed) if by_length \
        else batch_indices(len(data), batch_size, seed)
    for indices in itertools.islice(rows, skip, None):
        yield collate(data, indices, pad_id, device)


def batch_indices(n: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """The rows of each batch: a seeded shuffle of all n rows per epoch, batches running across epochs."""
    rng = random.Random(seed)
    order: list[int] = []
    at = 0  # an index into order, so that skipping many batches costs no copying
    while True:
        if len(order) - at < batch_size:
            fresh = list(range(n))
            rng.shuffle(fresh)
            order, at = order[at:] + fresh, 0
        yield order[at:at + batch_size]
        at += batch_size


def length_grouped_batch_indices(lengths: list[int], batch_size: int, seed: int,
                                 window: int = LENGTH_GROUP_WINDOW) -> Iterator[list[int]]:
    """The rows of each batch, rows of similar lengths together: each epoch's seeded shuffle is cut into windows
    of `window` batches, each window sorted by length and cut into batches, and the epoch's batches shuffled (so
    that lengths do not run long to short). A batch of random rows is padded to its longest, on SST-2's search
    rows to three times the tokens it holds; these, by a few percent (bench/results/batching.md). Rows left over
    at an epoch's end open the next; fewer rows than a batch make one batch of them all, every epoch."""
    if not lengths:
        raise ValueError("no rows to batch")
    rng = random.Random(seed)
    carried: list[int] = []
    while True:
        order = list(range(len(lengths)))
        rng.shuffle(order)
        if len(order) < batch_size:
            yield order
            continue
        order = carried + order
        full = len(order) // batch_size * batch_size
        order, carried = order[:full], order[full:]
        batches = []
        for start in range(0, full, window * batch_size):
            rows = sorted(order[start:start + window * batch_size], key=lambda i: lengths[i])
            batches += [rows[at:at + batch_size] for at in range(0, len(rows), batch_size)]
        rng.shuffle(batches)
        yield from batches


def loss_of(logits: torch.Tensor, labels: torch.Tensor, problem: str) -> torch.Tensor:
    if problem == "completion":
        total, tokens = completion_loss_sum(logits, labels)
        return total / max(tokens, 1)
    if problem == "regression":
        return F.mse_loss(logits.squeeze(-1).float(), labels.float())
    return F.cross_entropy(logits.float(), labels)


def scored_positions(labels: torch.Tensor) -> torch.Tensor:
    """Completion: the positions whose logits the loss scores, those that predict a labelled token (the logits at
    position t predict token t + 1; labels are aligned with the inputs, as transformers takes them). A model given
    them as `scored` (Supernet.forward) returns one row of logits per such position, in row-major order."""
    scored = torch.zeros_like(labels, dtype=torch.bool)
    scored[:, :-1] = labels[:, 1:] != IGNORE
    return scored


def completion_targets(labels: torch.Tensor) -> torch.Tensor:
    """The labelled tokens, in the order of the logits at `scored_positions(labels)`."""
    targets = labels[:, 1:]
    return targets[targets != IGNORE]


def completion_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Cross-entropy summed over the labelled tokens, and their count; `logits`: at `scored_positions(labels)`."""
    targets = completion_targets(labels)
    return F.cross_entropy(logits.float(), targets, reduction="sum"), targets.numel()


DISTILL_TEMPERATURE = 2.0  # softens the teacher's class probabilities (Hinton et al.; CoFi distils at 2 as well)


@dataclass
class Teacher:
    """Distillation: a frozen model whose outputs the trained one learns to match, and the weight of that term."""

    model: torch.nn.Module
    weight: float


def distill_loss(logits: torch.Tensor, target: torch.Tensor, problem: str) -> torch.Tensor:
    """The distance of a student's outputs to its teacher's on one batch: KL(teacher || student) of the class
    probabilities at DISTILL_TEMPERATURE (times its square, so its gradients keep the scale of the task's), the
    squared error of a regression's values, and for a completion the same KL per labelled token (both models'
    logits at the scored positions, one row each)."""
    if problem == "regression":
        return F.mse_loss(logits.squeeze(-1).float(), target.squeeze(-1).float())
    if problem == "completion" and not len(logits):  # no labelled token in this batch: 0 (a mean over no row is NaN)
        return logits.sum() * 0.0
    t = DISTILL_TEMPERATURE
    return F.kl_div(F.log_softmax(logits.float() / t, -1), F.log_softmax(target.float() / t, -1),
                    log_target=True, reduction="batchmean") * t * t


def autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def lr_factor(step: int, steps: int, warmup: int, decay: bool) -> float:
    if step < warmup:
        return (step + 1) / warmup
    if not decay:
        return 1.0
    return max(0.0, (steps - step) / max(1, steps - warmup))


StepCallback = Callable[[int, int, float], None]  # (step, steps, loss)


@dataclass
class TrainState:
    """Where a training run stands, all it needs to go on as if it had never stopped: the steps done, the sum of
    their losses, its wall time so far, and as tensors the trained parameters and the optimizer's state (both by
    their index in the optimizer's parameter order) and the random generators' states (dropout draws from them)."""

    step: int
    loss_sum: float
    wall_s: float
    tensors: dict[str, torch.Tensor]

    @classmethod
    def capture(cls, step: int, loss_sum: float, wall_s: float, params: list[torch.nn.Parameter],
                optimizer: torch.optim.Optimizer, device: torch.device) -> TrainState:
        tensors = {f"param.{i}": p.detach() for i, p in enumerate(params)}
        for index, state in optimizer.state_dict()["state"].items():
            tensors.update({f"optimizer.{index}.{name}": value for name, value in state.items()})
        tensors["rng.cpu"] = torch.get_rng_state()
        if device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
        return cls(step, loss_sum, wall_s, tensors)

    def restore(self, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer,
                device: torch.device) -> None:
        saved = {int(key.split(".")[1]): t for key, t in self.tensors.items() if key.startswith("param.")}
        if sorted(saved) != list(range(len(params))) or any(saved[i].shape != p.shape for i, p in enumerate(params)):
            raise ValueError("the checkpointed training trained other parameters than this one")
        with torch.no_grad():
            for i, param in enumerate(params):
                param.copy_(saved[i])
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in self.tensors.items():
            if key.startswith("optimizer."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        optimizer.load_state_dict({**optimizer.state_dict(), "state": state})
        torch.set_rng_state(self.tensors["rng.cpu"])
        if device.type == "cuda" and "rng.cuda" in self.tensors:
            torch.cuda.set_rng_state(self.tensors["rng.cuda"], device)


@contextmanager
def without_dropout(model: torch.nn.Module):
    """Every `nn.Dropout` in `model` (the backbone's, its attention's, LoRA's, the head's) at p = 0 inside the
    block, as trained before after it. The model stays in train mode otherwise (gradient checkpointing too)."""
    dropouts = [module for module in model.modules() if isinstance(module, torch.nn.Dropout)]
    rates = [module.p for module in dropouts]
    for module in dropouts:
        module.p = 0.0
    try:
        yield
    finally:
        for module, rate in zip(dropouts, rates, strict=True):
            module.p = rate


def train(model: torch.nn.Module, params: list, batches: Iterator[dict], *, steps: int,
          lr: float, problem: str, device: torch.device, warmup_ratio: float = 0.06, weight_decay: float = 0.0,
          decay: bool = True, trackers: Sequence = (), extra_loss: Callable[[], torch.Tensor] | None = None,
          on_step: StepCallback | None = None, should_stop: Callable[[], bool] | None = None,
          until: Callable[[int], bool] | None = None, check_every: int = 1,
          after_step: Callable[[int], None] | None = None, resume: TrainState | None = None,
          checkpoint: TrainCheckpoint | None = None, teacher: Teacher | None = None) -> float:
    """AdamW with linear warm-up (and linear decay unless `decay` is False); returns the mean training loss.

    `params` is a list of parameters, or of optimizer groups (dicts) whose own "lr" overrides `lr`.
    `trackers` (ImportanceTracker, RankTracker) see each batch's mask before the forward and the gradients after
    the backward; `extra_loss` adds a regulariser (the backbone masks' L1 penalty). `until(steps_done)`, called
    before the first step and then every `check_every` steps, ends training early when it returns True;
    `after_step(step)` runs after each optimizer step, gradients still in place (AdaLoRA's rank allocation).
    `resume` continues a run of this same training from where it was checkpointed (give `batches` that skip the
    steps it did); `checkpoint` saves the run's state whenever it says one is due. With `teacher`, the loss
    blends in the distance of the outputs to the teacher's (`distill_loss`)."""
    from .result import Cancelled

    groups = params if params and isinstance(params[0], dict) else [{"params": params}]
    groups = [{**g, "params": list(g["params"]), "base_lr": g.get("lr", lr)} for g in groups]
    all_params = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    warmup = math.ceil(steps * warmup_ratio)
    total, done, prior_wall = 0.0, 0, 0.0
    if resume is not None:
        resume.restore(all_params, optimizer, device)
        total, done, prior_wall = resume.loss_sum, resume.step, resume.wall_s
    began = time.monotonic()
    model.train()
    for step in range(done, steps):
        if until is not None and step % check_every == 0:
            if until(step):
                break
            model.train()  # `until` may have evaluated the model
        if should_stop is not None and should_stop():
            raise Cancelled()
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * lr_factor(step, steps, warmup, decay)
        batch = next(batches)
        labels = pop_labels(batch, problem)
        for tracker in trackers:
            tracker.before_forward(batch["attention_mask"])
        with autocast(device):
            logits = model(**batch)
            loss = loss_of(logits, labels, problem)
            if teacher is not None:
                with torch.no_grad():
                    target = teacher.model(**batch)
                loss = (1 - teacher.weight) * loss + teacher.weight * distill_loss(logits, target, problem)
            if extra_loss is not None:
                loss = loss + extra_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for tracker in trackers:
            tracker.after_backward()
        torch.nn.utils.clip_grad_norm_(all_params, 1.0)
        optimizer.step()
        if after_step is not None:
            after_step(step)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"training loss became {value} at step {step + 1}; try a lower learning rate")
        total += value
        done += 1
        if on_step is not None:
            on_step(step + 1, steps, value)
        if checkpoint is not None and checkpoint.due(done, steps):
            checkpoint.save(TrainState.capture(done, total, prior_wall + time.monotonic() - began, all_params,
                                               optimizer, device))
    else:
        if until is not None:
            until(steps)  # the last word on the finished model
    model.eval()
    return total / max(done, 1)


@torch.no_grad()
def eval_outputs(model: torch.nn.Module, data: Encoded, batch_size: int, pad_id: int, device: torch.device,
                 max_tokens: int | None = None) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """(row indices, logits, labels) of each evaluation batch of `data`, the model in eval mode (a completion's
    logits: at its scored positions)."""
    model.eval()
    for indices in eval_batches(data.input_ids, batch_size, max_tokens):
        batch = collate(data, indices, pad_id, device)
        labels = pop_labels(batch, data.problem)
        with autocast(device):
            logits = model(**batch)
        yield indices, logits, labels


def pop_labels(batch: dict, problem: str) -> torch.Tensor:
    """Take the labels out of a batch (the model does not see them); a completion's batch tells the model where
    its logits are scored instead (`scored`), so that it computes them there only."""
    labels = batch.pop("labels")
    if problem == "completion":
        batch["scored"] = scored_positions(labels)
    return labels


def mean_loss(model: torch.nn.Module, data: Encoded, batch_size: int, pad_id: int, device: torch.device,
              max_tokens: int | None = None) -> float:
    """The training loss (without regularisers) averaged over `data`, in eval mode (a completion's: over all its
    tokens, not over examples)."""
    return mean_of(*example_losses(model, data, batch_size, pad_id, device, max_tokens))


def mean_of(losses: np.ndarray, counts: np.ndarray) -> float:
    """The mean loss per scored item of `example_losses`' sums and counts (0 where nothing was scored)."""
    return float(losses.sum() / max(counts.sum(), 1))


def example_losses(model: torch.nn.Module, data: Encoded, batch_size: int, pad_id: int, device: torch.device,
                   max_tokens: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each example's loss summed over what it scores (a completion's tokens, or its one label) and how many it
    scored, in the data's order, in eval mode: the mean loss is their sums' ratio, and two models' losses differ
    example by example, which gives that difference its standard error."""
    losses, counts = np.zeros(len(data)), np.ones(len(data))
    for indices, logits, labels in eval_outputs(model, data, batch_size, pad_id, device, max_tokens):
        if data.problem == "completion":
            per_token = F.cross_entropy(logits.float(), completion_targets(labels), reduction="none")
            scored = scored_positions(labels).sum(-1)
            owner = torch.repeat_interleave(torch.arange(len(indices), device=per_token.device), scored)
            summed = torch.zeros(len(indices), device=per_token.device).index_add_(0, owner, per_token)
            counts[indices] = scored.cpu().numpy()
        elif data.problem == "regression":
            summed = (logits.float().squeeze(-1) - labels.float()) ** 2
        else:
            summed = F.cross_entropy(logits.float(), labels, reduction="none")
        losses[indices] = summed.cpu().numpy()
    return losses, counts


def eval_batches(sequences: list[list[int]], batch_size: int, max_tokens: int | None = None) -> list[list[int]]:
    """The indices of `sequences` in each evaluation (or generation) batch, shortest first: batches of similar
    lengths pad little (on a CPU, half the work of a batch of mixed lengths on SST-2). A batch holds at most
    `batch_size` rows and, with `max_tokens`, at most that many tokens padded (rows x its longest; a longer
    sequence is a batch alone): a CPU evaluates fastest in batches of about a thousand tokens, so short
    sequences go many to a batch and long ones few (bench/results/batching.md)."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    batches: list[list[int]] = []
    for i in order:  # ascending lengths: the row joining a batch is its longest
        batch = batches[-1] if batches else None
        if batch is None or len(batch) == batch_size or (
                max_tokens is not None and (len(batch) + 1) * len(sequences[i]) > max_tokens):
            batches.append([i])
        else:
            batch.append(i)
    return batches


def chance_example_losses(data: Encoded) -> np.ndarray:
    """Each example's loss under the best constant prediction for `data`: its label's -log frequency in `data`
    (their mean is the labels' entropy), or for regression its squared distance from the labels' mean (their
    variance). A model whose loss is not below theirs has learned nothing about the inputs (a prior taken from
    elsewhere can be worse than a uniform guess, and would let an untrained model pass). Not for completion, whose
    reference is the backbone's own loss (pipeline._Context.chance)."""
    labels = np.asarray(data.labels, dtype=float)
    if data.problem == "regression":
        return (labels - labels.mean()) ** 2
    frequencies = np.bincount(labels.astype(int)) / len(labels)
    return -np.log(frequencies[labels.astype(int)])


def predict(model: torch.nn.Module, data: Encoded, batch_size: int, pad_id: int,
            device: torch.device, max_tokens: int | None = None) -> np.ndarray:
    """Class indices (classification) or values (regression), in the data's order."""
    out = np.zeros(len(data), dtype=float if data.problem == "regression" else int)
    for indices, logits, _ in eval_outputs(model, data, batch_size, pad_id, device, max_tokens):
        logits = logits.float()
        values = logits.squeeze(-1) if data.problem == "regression" else logits.argmax(-1)
        out[indices] = values.cpu().numpy()
    return out


def evaluate(model: torch.nn.Module, data: Encoded, metric_names, batch_size: int, pad_id: int,
             device: torch.device, max_tokens: int | None = None) -> dict[str, float]:
    if data.problem == "completion":
        from .completion import completion_metrics

        return completion_metrics(model, data, metric_names, batch_size, pad_id, device, max_tokens)
    predictions = predict(model, data, batch_size, pad_id, device, max_tokens)
    return compute_metrics(metric_names, predictions, np.asarray(data.labels))
