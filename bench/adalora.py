"""AdaLoRA (Zhang et al. 2023, peft's implementation) as the quality benchmark's baseline, driven as peft documents
it: `update_and_allocate(step)` after every optimizer step (the budget schedule prunes singular values by their
smoothed sensitivity), the orthogonality regulariser in the loss, and the same data, steps, schedule and
evaluation as every other method (pruning.train). The final budget is LoRA's: `target_r` ranks on average over
the same projections (q, v) that LoRA r=8 adapts, from `init_r` = 1.5 x that.

Its learning rate is its own, chosen on the validation split: AdaLoRA starts from zero singular values between
small random singular vectors, and its updates reach the weights only through those 12 values per module, so at
LoRA's rate (1e-3) and these short budgets it does not leave chance (SST-2 seed 0, 300 steps: 51.3, the head alone
cannot learn the task on the frozen pooler) while at 1e-2 it learns it. Each rate trains on train without the
validation split (the carving every method's hold-out uses); the best on that split trains again on all of train
and is scored on dev, as the 8-candidate search's choice is. Dev is looked at once."""

from __future__ import annotations

import time

import torch

# q and v, as the reference LoRA: the same modules, the same final rank budget
TARGETS = ("query", "value")
# LoRA's rate and up: log-spaced over the decade where AdaLoRA leaves chance at a few hundred steps
LEARNING_RATES = (1e-3, 3e-3, 1e-2)


def fit_adalora(spec, target_r: int = 8) -> dict:
    """Select AdaLoRA's learning rate for `spec` (its task, steps, batch) on the validation split, train the chosen
    one on all of train and evaluate it on dev; returns the metrics, the final trainable parameter count (the
    ranks kept), the rank pattern before and after, and the rates tried."""
    from pruning.backbones import peak_memory_mb
    from pruning.data.metrics import LOWER_IS_BETTER
    from pruning.pipeline import _Context

    ctx = _Context.prepare(spec)  # the task, encoded, and the validation split every hold-out uses
    start = time.monotonic()
    candidates = []
    for lr in LEARNING_RATES:
        trained = _train(ctx, ctx.train_without_validation(), lr, target_r)
        candidates.append({"lr": lr, "validation_metric": ctx.validation_metric(trained["model"])})
    sign = -1 if ctx.task.primary_metric in LOWER_IS_BETTER else 1
    best = max(candidates, key=lambda c: sign * c["validation_metric"])
    best["chosen"] = True
    search_wall = time.monotonic() - start
    final = _train(ctx, ctx.train_data, best["lr"], target_r)
    metrics = ctx.evaluate(final["model"], ctx.dev_data)
    return {"metric_name": ctx.task.primary_metric, "metric": metrics[ctx.task.primary_metric], "metrics": metrics,
            "trainable_params": _kept_params(final["peft"]), "search_wall_s": search_wall,
            "retrain_wall_s": final["wall_s"], "peak_memory_mb": peak_memory_mb(ctx.device),
            "initial_ranks": final["initial_ranks"], "final_ranks": _ranks(final["peft"]), "candidates": candidates}


def _train(ctx, data, lr: float, target_r: int) -> dict:
    """AdaLoRA on a fresh copy of the model, trained on `data` at `lr` with the spec's steps and schedule; the
    returned model gives logits, its regression head folded back to label units."""
    from peft import AdaLoraConfig, get_peft_model
    from transformers import set_seed

    from pruning.arch import architecture_of, head_parameters
    from pruning.backbones import load_model
    from pruning.regression import fold, standardise_head
    from pruning.train import shuffled_batches, train

    spec = ctx.spec
    set_seed(spec.seed)
    steps = spec.train.steps
    base = load_model(spec.model, ctx.task.num_labels, ctx.task.problem, ctx.pad_id)
    if ctx.task.problem == "regression":  # as every other method's head (pruning.regression)
        standardise_head(base, data.labels)
    config = AdaLoraConfig(init_r=round(1.5 * target_r), target_r=target_r, lora_alpha=2 * target_r,
                           lora_dropout=0.1, target_modules=list(TARGETS), tinit=round(0.1 * steps),
                           tfinal=round(0.2 * steps), deltaT=max(1, steps // 30), total_step=steps)
    model = get_peft_model(base, config)
    # the task head trains in place (not a modules_to_save copy: fold needs it), the modules every other method
    # trains as the head (the architecture map's: BERT's classifier, LLaMA's score)
    for p in head_parameters(base, architecture_of(base)):
        p.requires_grad = True
    initial = _ranks(model)
    logits = _Logits(model).to(ctx.device)
    params = [p for p in model.parameters() if p.requires_grad]
    start = time.monotonic()
    train(logits, params, shuffled_batches(data, spec.train.batch_size, spec.seed, ctx.pad_id, ctx.device),
          steps=steps, lr=lr, problem=ctx.task.problem, device=ctx.device, warmup_ratio=spec.train.warmup_ratio,
          weight_decay=spec.train.weight_decay, extra_loss=lambda: config.orth_reg_weight * _orthogonality(model),
          after_step=lambda step: model.base_model.update_and_allocate(step))
    wall = time.monotonic() - start
    fold(base)
    return {"model": logits, "peft": model, "initial_ranks": initial, "wall_s": wall}


class _Logits(torch.nn.Module):
    """pruning.train calls model(**batch) and expects logits."""

    def __init__(self, model):
        super().__init__()
        self.inner = model

    def forward(self, **batch):
        return self.inner(**batch).logits


def _orthogonality(model) -> torch.Tensor:
    """AdaLoRA's regulariser, as peft's AdaLoraModel.forward adds it when it computes the loss itself:
    mean over the A and B matrices of ||P P^T - I||_F (A) or ||P^T P - I||_F (B)."""
    total, count = 0.0, 0
    for name, p in model.named_parameters():
        if ("lora_A" in name or "lora_B" in name) and p.requires_grad and p.numel():
            cov = p @ p.T if "lora_A" in name else p.T @ p
            total = total + torch.linalg.matrix_norm(cov - torch.eye(cov.shape[0], device=cov.device), "fro")
            count += 1
    return total / max(count, 1)


def _ranks(model) -> dict[str, int]:
    """Module -> ranks in use: its rank in AdaLoRA's allocated rank pattern (set once the budget schedule has
    run), else the size of its singular-value vector lora_E (the initial rank)."""
    pattern = model.peft_config["default"].rank_pattern or {}
    ranks = {}
    for name, p in model.named_parameters():
        if name.endswith("lora_E.default"):
            module = name.removesuffix(".lora_E.default")
            mask = next((m for key, m in pattern.items()
                         if module.endswith(key.removesuffix(".default").removesuffix(".lora_E"))), None)
            ranks[module] = int(sum(mask)) if mask is not None else p.shape[0]
    return ranks


def _kept_params(model) -> int:
    """Trainable parameters the final ranks hold: per kept rank a row of A, a column of B and its singular value
    (peft keeps the masked ones in memory, zeroed; a rank-trimmed export drops them)."""
    params = dict(model.named_parameters())
    total = 0
    for module, rank in _ranks(model).items():
        a, b = params[f"{module}.lora_A.default"], params[f"{module}.lora_B.default"]
        total += rank * (a.shape[1] + b.shape[0] + 1)
    return total
