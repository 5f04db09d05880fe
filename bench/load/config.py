"""What the bench runs: the model, budget and search of its jobs, its targets, and where things are."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
RESULTS = ROOT / "bench" / "results"
DEMO_DATA = ROOT / "peftsearch" / "demo_data"
MODEL = "all-MiniLM-L6-v2"
BUDGET = "0.5%"
# The overhead job: about 30-45 s on one core of this machine, so that 3 % is about a second.
SEARCH = {"schedule": {"rounds": 2, "steps_per_round": 8, "eval_examples": 100},
          "train": {"steps": 30, "batch_size": 32, "max_length": 64, "lr": 2e-3}, "seed": 0}
TARGETS = {"post_p99_ms": 20.0, "get_p99_ms": 10.0, "list_p99_ms": 30.0, "overhead_pct": 3.0}
FINAL = ("succeeded", "failed", "cancelled")
