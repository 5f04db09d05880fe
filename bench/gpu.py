"""The GPU path of a decoder, in one short script to run whenever a GPU is lent (issue 13): a LoRA training step of
a SmolLM2-135M-shaped model at batch 16 x 256 tokens, under bf16 autocast on CUDA, with and without gradient
checkpointing, and on 4-bit NF4 base weights (QLoRA, bitsandbytes): median step time and peak memory.

    python -m bench.gpu                      # CUDA when present, else CPU (slow at this shape)
    python -m bench.gpu --device cpu --layers 2 --batch 2 --length 32   # a smoke run

The weights are random: a step costs the same time and memory whatever the weights hold, and the device machine
cannot install the model's package. The shape is SmolLM2-135M-Instruct's config (the installed one when `make
decoder` put it here). The step is the engine's: its loader (4-bit weights: `train.load_in_4bit`), its Supernet with
LoRA r=8 on q and v, its autocast and loss.
"""

from __future__ import annotations

import argparse
import gc
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

from .common import describe_machine, machine, provenance, write_report

RESULTS = Path(__file__).parent / "results"
# SmolLM2-135M-Instruct's config.json (its sizes only), for when the model itself is not installed
SMOLLM2_SHAPE = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                 "num_key_value_heads": 3, "vocab_size": 49152, "max_position_embeddings": 8192,
                 "tie_word_embeddings": True}


def shape(layers: int | None) -> dict:
    from pruning.sizes import read_config

    installed = read_config("SmolLM2-135M-Instruct")
    sizes = {k: installed[k] for k in SMOLLM2_SHAPE} if installed else dict(SMOLLM2_SHAPE)
    return {**sizes, **({"num_hidden_layers": layers} if layers else {})}


def random_model(folder: Path, sizes: dict) -> str:
    """A LLaMA of `sizes` with random weights, saved where the engine's loader reads it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**sizes, pad_token_id=0)).save_pretrained(folder)
    return str(folder)


def lora_step(model_dir: str, device_name: str, batch: int, length: int, steps: int, checkpointing: bool,
              four_bit: bool = False) -> dict:
    """Median time and peak memory of a training step of LoRA r=8 on q, v (AdamW), as the engine trains it."""
    import torch

    from pruning import LoraSpec, SpaceSpec
    from pruning.backbones import checkpoint_activations, load_model, resolve_device
    from pruning.supernet import Supernet
    from pruning.train import autocast, loss_of, scored_positions

    device = resolve_device(device_name)
    gc.collect()  # the previous run's model, should a reference cycle keep it, must not count in this peak
    if device.type == "cuda":
        torch.cuda.empty_cache()
    model = load_model(model_dir, 1, "completion", load_in_4bit=four_bit, device=device)
    if checkpointing:
        checkpoint_activations(model)
    net = Supernet(model, SpaceSpec(types=("lora",), lora=LoraSpec(targets=("q", "v")))).to(device)
    optimizer = torch.optim.AdamW(net.trainable_parameters(), lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (batch, length), device=device)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "scored": scored_positions(ids)}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    net.train()
    times = []
    for _ in range(steps + 1):  # the first step allocates
        start = time.perf_counter()
        with autocast(device):
            logits = net(**inputs)
        loss = loss_of(logits, ids, "completion")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"gradient_checkpointing": checkpointing, "base_weights": "4-bit NF4" if four_bit else "as stored",
            "step_s": sorted(times[1:])[len(times[1:]) // 2],
            "peak_memory_mb": peak, "loss": float(loss), "trainable_params": net.peft_params(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "dtype": "bf16 autocast" if device.type == "cuda" else "fp32"}


def _markdown(data: dict) -> str:
    lines = ["# The GPU path: a LoRA step of SmolLM2-135M's shape", "",
             f"Command: `{data['command']}`  ", f"Machine: {describe_machine(data['machine'])}  ",
             f"Shape: {data['shape']}; batch {data['batch']} x {data['length']} tokens, median of {data['steps']} "
             "steps after the first", "",
             "| base weights | gradient checkpointing | device | precision | step s | peak memory MiB |",
             "|---|---|---|---|---|---|"]
    for run in data["runs"]:
        peak = f"{run['peak_memory_mb']:.0f}" if run["peak_memory_mb"] is not None else "— (CPU: not measured)"
        lines.append(f"| {run['base_weights']} | {'on' if run['gradient_checkpointing'] else 'off'} | "
                     f"{run['device']} | {run['dtype']} | "
                     f"{run['step_s']:.3f} | {peak} |")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--layers", type=int, help="fewer layers than the model's (a smoke run)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    command = "python -m bench.gpu " + shlex.join(argv if argv is not None else sys.argv[1:])
    sizes = shape(args.layers)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = random_model(Path(tmp), sizes)
        runs = [lora_step(model_dir, args.device, args.batch, args.length, args.steps, on, four_bit)
                for four_bit in (False, True) for on in (False, True)]
    data = {"command": command, "machine": machine(), "shape": sizes, "batch": args.batch, "length": args.length,
            "steps": args.steps, "runs": runs, **provenance()}
    for run in runs:
        print(json.dumps(run), flush=True)
    write_report(args.results, "gpu", data, _markdown(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
