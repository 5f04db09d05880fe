"""AdaLoRA (Zhang et al. 2023, peft's implementation) as the quality benchmark's baseline, driven as peft documents
it: `update_and_allocate(step)` after every optimizer step (the budget schedule prunes singular values by their
smoothed sensitivity), the orthogonality regulariser in the loss, and the same data, steps, schedule and
evaluation as every other method (pruning.train). The final budget is LoRA's: `target_r` ranks on average over
the same projections (q, v) that LoRA r=8 adapts, from `init_r` = 1.5 x that."""

from __future__ import annotations

import time

import torch

# q and v, as the reference LoRA: the same modules, the same final rank budget
TARGETS = ("query", "value")


def fit_adalora(spec, target_r: int = 8) -> dict:
    """Train and evaluate AdaLoRA for `spec` (its task, steps, lr, batch); returns the metrics, the final trainable
    parameter count (the ranks kept) and the rank pattern before and after."""
    from peft import AdaLoraConfig, get_peft_model
    from transformers import set_seed

    from pruning.arch import architecture_of, head_parameters
    from pruning.backbones import load_model, load_tokenizer, peak_memory_mb
    from pruning.data import load_task
    from pruning.regression import fold, standardise_head
    from pruning.train import encode, evaluate, shuffled_batches, train

    set_seed(spec.seed)
    device = torch.device("cpu" if spec.device == "cpu" or not torch.cuda.is_available() else "cuda")
    task = load_task(spec.task, seed=spec.seed)
    tokenizer = load_tokenizer(spec.model)
    steps = spec.train.steps
    train_data = encode(tokenizer, task.train, spec.train.max_length, task.problem)
    dev_data = encode(tokenizer, task.dev, spec.train.max_length, task.problem)
    base = load_model(spec.model, task.num_labels, task.problem, tokenizer.pad_token_id)
    if task.problem == "regression":  # as every other method's head (pruning.regression)
        standardise_head(base, train_data.labels)
    config = AdaLoraConfig(init_r=round(1.5 * target_r), target_r=target_r, lora_alpha=2 * target_r,
                           lora_dropout=0.1, target_modules=list(TARGETS), tinit=round(0.1 * steps),
                           tfinal=round(0.2 * steps), deltaT=max(1, steps // 30), total_step=steps)
    model = get_peft_model(base, config)
    # the task head trains in place (not a modules_to_save copy: fold needs it), the modules every other method
    # trains as the head (the architecture map's: BERT's classifier, LLaMA's score)
    for p in head_parameters(base, architecture_of(base)):
        p.requires_grad = True
    initial = _ranks(model)

    class Logits(torch.nn.Module):  # pruning.train calls model(**batch) and expects logits
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, **batch):
            return self.inner(**batch).logits

    params = [p for p in model.parameters() if p.requires_grad]
    start = time.monotonic()
    train(Logits().to(device), params, shuffled_batches(train_data, spec.train.batch_size, spec.seed,
                                                        tokenizer.pad_token_id, device),
          steps=steps, lr=spec.train.lr, problem=task.problem, device=device, warmup_ratio=spec.train.warmup_ratio,
          weight_decay=spec.train.weight_decay, extra_loss=lambda: config.orth_reg_weight * _orthogonality(model),
          after_step=lambda step: model.base_model.update_and_allocate(step))
    wall = time.monotonic() - start
    fold(base)
    metrics = evaluate(Logits(), dev_data, task.metric_names, spec.train.eval_batch_size, tokenizer.pad_token_id,
                       device)
    final = _ranks(model)
    return {"metric_name": task.primary_metric, "metric": metrics[task.primary_metric], "metrics": metrics,
            "trainable_params": _kept_params(model), "retrain_wall_s": wall, "peak_memory_mb": peak_memory_mb(device),
            "initial_ranks": initial, "final_ranks": final}


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
