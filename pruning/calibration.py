"""What a module type is worth against another, measured: the loss increase when one unit is switched off.

The criteria rank units of one type against each other (their raw scores are per-parameter means of quantities
that differ between a LoRA, an adapter and a prefix, so they cannot rank across types). What does compare across
types is the validation-loss increase when a unit is switched off: a loss, whatever the unit. The search
averages it over a few units of each type, and that mean is the type's importance per unit.
"""

from __future__ import annotations

from contextlib import contextmanager

FLOOR = 1e-6  # a type whose units do not help at all still gets an ordering, by its criteria
# The layer outputs the ablations replay are kept up to this many bytes (on an accelerator, up to a quarter of its
# free memory); the layers beyond are recomputed.
REPLAY_BYTES = 1 << 30
FLOAT_BYTES = 4  # a layer output's element, at most (float32; bf16 under autocast takes half)


def unit_ablation(supernet, data, keys, batch_size: int, pad_id: int, device, max_tokens: int | None = None, *,
                  replay_bytes: int = REPLAY_BYTES) -> dict[str, float]:
    """unit key -> (loss on `data` with that unit alone switched off) - (loss with every unit on).

    A unit lives in one layer, so the layers below it compute exactly what they computed for the reference: each
    ablation replays their outputs, recorded during the reference pass, and runs only from the unit's layer on
    (what it saves: bench/results/replay.md)."""
    import torch

    from .arch import layers_of
    from .train import eval_batches, mean_loss  # torch: this module's other functions are plain Python

    if device.type == "cuda":
        replay_bytes = min(replay_bytes, torch.cuda.mem_get_info(device)[0] // 4)
    layers = list(layers_of(supernet.model, supernet.arch))
    deepest = max((supernet.unit(key).layer for key in keys), default=0)
    widths = [(len(batch), max(len(data.input_ids[i]) for i in batch))  # mean_loss's batches, padded
              for batch in eval_batches(data.input_ids, batch_size, max_tokens)]
    bytes_per_layer = FLOAT_BYTES * supernet.model.config.hidden_size * sum(rows * width for rows, width in widths)
    replay = _LayerReplay(layers[:min(deepest, replay_bytes // max(bytes_per_layer, 1))])
    with replay.recording():
        reference = mean_loss(supernet, data, batch_size, pad_id, device, max_tokens)
    out = {}
    for key in keys:
        unit = supernet.unit(key)
        with unit.switched_off(), replay.below(unit.layer):
            out[key] = mean_loss(supernet, data, batch_size, pad_id, device, max_tokens) - reference
    return out


class _LayerReplay:
    """Records what each of `layers` returns, call after call, then makes the first few return it again instead
    of computing (their submodules, and any unit hooked into them, are not called)."""

    def __init__(self, layers):
        self.layers, self.outputs = layers, [[] for _ in layers]

    @contextmanager
    def recording(self):
        handles = [layer.register_forward_hook(lambda _m, _i, output, kept=kept: kept.append(output))
                   for layer, kept in zip(self.layers, self.outputs, strict=True)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @contextmanager
    def below(self, depth: int):
        replayed = self.layers[:depth]
        own = [layer.__dict__.get("forward") for layer in replayed]  # a forward set on the instance, if any
        for layer, kept in zip(replayed, self.outputs[:depth], strict=True):
            layer.forward = _replaying(kept)
        try:
            yield
        finally:
            for layer, forward in zip(replayed, own, strict=True):
                if forward is None:
                    del layer.forward  # the class's forward again
                else:
                    layer.forward = forward


def _replaying(kept: list):
    calls = iter(kept)

    def forward(*_args, **_kwargs):
        output = next(calls, None)
        if output is None:
            raise RuntimeError(f"a replayed layer was called more often than the {len(kept)} times recorded: "
                               "the ablation's batches differ from the reference's")
        return output

    return forward


def sample_per_type(keys: list[str], per_type: int) -> list[str]:
    """Up to `per_type` units of each type, spread evenly over depth (keys are '<type>.<layer>')."""
    by_type: dict[str, list[str]] = {}
    for key in sorted(keys, key=lambda k: int(k.partition(".")[2])):
        by_type.setdefault(key.partition(".")[0], []).append(key)
    chosen = []
    for units in by_type.values():
        if len(units) <= per_type:
            chosen += units
        elif per_type == 1:
            chosen.append(units[len(units) // 2])  # the middle of the depth
        else:
            step = (len(units) - 1) / (per_type - 1)
            chosen += [units[round(i * step)] for i in range(per_type)]
    return chosen


def type_values(ablation: dict[str, float]) -> dict[str, float]:
    """Mean loss increase per unit of each type, floored at FLOOR (a type that does not help goes first)."""
    sums: dict[str, list[float]] = {}
    for key, value in ablation.items():
        sums.setdefault(key.partition(".")[0], []).append(value)
    return {kind: max(sum(values) / len(values), FLOOR) for kind, values in sums.items()}
