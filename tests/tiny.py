"""A tiny randomly initialised BERT and a toy task, for tests and smoke runs (nothing is downloaded).

`make_tiny_model(dir)` writes a BERT (hidden 64, 4 layers, 4 heads, vocab ~1000) with its tokenizer, loadable by
`AutoModelForSequenceClassification.from_pretrained(dir)`. `make_toy_task(dir)` writes a sentiment-like
train/dev pair whose label is decided by which word list a sentence draws from, so a few hundred steps learn it.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

POSITIVE = ["good", "great", "fine", "nice", "happy", "love", "superb", "bright", "warm", "fun"]
NEGATIVE = ["bad", "awful", "poor", "sad", "hate", "dull", "grim", "cold", "boring", "weak"]
NEUTRAL = ["the", "a", "movie", "film", "plot", "actor", "scene", "was", "is", "very", "quite", "story", "and",
           "it", "this", "that", "of", "in", "with", "ending"]


def _vocab() -> list[str]:
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = POSITIVE + NEGATIVE + NEUTRAL
    chars = [chr(c) for c in range(33, 127)]
    filler = [f"tok{i}" for i in range(1000 - len(special) - len(words) - 2 * len(chars))]
    return list(dict.fromkeys(special + words + chars + [f"##{c}" for c in chars] + filler))


def make_tiny_model(path: str | Path, *, hidden: int = 64, layers: int = 4, heads: int = 4,
                    intermediate: int = 128, num_labels: int = 2, seed: int = 0) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(_vocab())}, do_lower_case=True)
    tokenizer.save_pretrained(path)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=intermediate, max_position_embeddings=128,
                        num_labels=num_labels)
    BertForSequenceClassification(config).save_pretrained(path)
    return path


def toy_examples(n: int, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        cue = rng.choice(POSITIVE if label else NEGATIVE)
        words = rng.choices(NEUTRAL, k=rng.randint(3, 9))
        words.insert(rng.randint(0, len(words)), cue)
        rows.append((" ".join(words), label))
    return rows


def make_toy_task(path: str | Path, *, n_train: int = 256, n_dev: int = 64, fmt: str = "csv",
                  seed: int = 0) -> tuple[Path, Path]:
    """Write train/dev files with columns `text,label`; returns their paths."""
    return write_task(path, toy_examples(n_train, seed), toy_examples(n_dev, seed + 1), fmt)


def write_task(path: str | Path, train: list[tuple[str, object]], dev: list[tuple[str, object]],
               fmt: str = "csv") -> tuple[Path, Path]:
    """Write (text, label) rows as `train.<fmt>` and `dev.<fmt>` (csv, tsv or jsonl) under `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    out = []
    for split, rows in [("train", train), ("dev", dev)]:
        file = path / f"{split}.{fmt}"
        if fmt == "jsonl":
            file.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
        else:
            with file.open("w", newline="") as f:
                writer = csv.writer(f, delimiter="\t" if fmt == "tsv" else ",")
                writer.writerow(["text", "label"])
                writer.writerows(rows)
        out.append(file)
    return out[0], out[1]
