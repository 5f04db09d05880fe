"""Tiny randomly initialised models and toy tasks, for tests and smoke runs (nothing is downloaded).

`make_tiny_model(dir)` writes a BERT (hidden 64, 4 layers, 4 heads, vocab ~1000) with its tokenizer, loadable by
`AutoModelForSequenceClassification.from_pretrained(dir)`. `make_toy_task(dir)` writes a sentiment-like
train/dev pair whose label is decided by which word list a sentence draws from, so a few hundred steps learn it.
`make_tiny_llama(dir)` writes a decoder shaped like SmolLM2 in miniature (LLaMA, grouped-query attention, tied
embeddings, pad = eos = <|im_end|>, a ChatML chat template) and `make_completion_task(dir)` the toy task as
JSONL completions ("positive" / "negative"), plain or as chats.
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


# ChatML, as SmolLM2's template writes it (without its default system prompt)
CHAT_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
                 "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
ANSWERS = ("negative", "positive")  # the completion task's answers, by the toy label


def make_tiny_llama(path: str | Path, *, hidden: int = 64, layers: int = 4, heads: int = 4, kv_heads: int = 2,
                    intermediate: int = 128, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    words = POSITIVE + NEGATIVE + NEUTRAL + ["system", "user", "assistant", "review", "sentiment", *ANSWERS]
    chars = [chr(c) for c in range(33, 127)]
    tokens = list(dict.fromkeys(["<unk>", "<|im_start|>", "<|im_end|>", *words, *chars]))
    tokens += [f"tok{i}" for i in range(512 - len(tokens))]
    word_level = Tokenizer(models.WordLevel({token: i for i, token in enumerate(tokens)}, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()  # newlines of the template are not tokens
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="<unk>", bos_token="<|im_start|>",
                                        eos_token="<|im_end|>", pad_token="<|im_end|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokens), hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=256, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
                         pad_token_id=2)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        # A pretrained model's token embeddings are far larger than the 0.02 of an initialisation; with those, the
        # frozen tied output layer could not make any prediction confident, and the toy task would not be learned.
        model.model.embed_tokens.weight.normal_(0, 0.5)
    model.save_pretrained(path)
    return path


def completion_rows(n: int, seed: int, chat: bool = False) -> list[dict]:
    """The toy task as completions: a review ending with its cue word, then its sentiment word (the cue last, a
    fixed distance from the answer, so that a tiny random decoder learns it in a few dozen steps)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        text = " ".join([*rng.choices(NEUTRAL, k=rng.randint(3, 9)), rng.choice(POSITIVE if label else NEGATIVE)])
        if chat:
            rows.append({"messages": [{"role": "user", "content": f"review : {text}"},
                                      {"role": "assistant", "content": ANSWERS[label]}]})
        else:
            rows.append({"prompt": f"review : {text} sentiment :", "completion": ANSWERS[label]})
    return rows


def make_completion_task(path: str | Path, *, n_train: int = 256, n_dev: int = 64, chat: bool = False,
                         seed: int = 0) -> tuple[Path, Path]:
    """Write train.jsonl and dev.jsonl of completion rows; returns their paths."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    out = []
    for split, rows in [("train", completion_rows(n_train, seed, chat)), ("dev", completion_rows(n_dev, seed + 1, chat))]:
        file = path / f"{split}.jsonl"
        file.write_text("".join(json.dumps(row) + "\n" for row in rows))
        out.append(file)
    return out[0], out[1]
