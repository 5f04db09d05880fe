"""Completion tasks of decoder language models: prompt/completion and chat rows as labelled token sequences, and
their metrics (loss per completion token, perplexity, exact match of the greedy completion).

The loss itself, masked and shifted, is train.loss_of's; train.encode and train.evaluate hand completion data here.
"""

from __future__ import annotations

import math

import torch

from .data import Completion
from .data.loaders import COMPLETION_LOSSES
from .data.metrics import COMPLETION_METRICS
from .train import (
    IGNORE,
    Encoded,
    autocast,
    completion_loss_sum,
    completion_targets,
    eval_batches,
    eval_outputs,
)

EXACT_MATCH_TOKENS = 8  # completions this short (before their end token) are answers: exact match scores them too


def encode_completions(tokenizer, examples: list[Completion], max_length: int) -> Encoded:
    """Prompt and completion as one sequence, labelled on the completion only. A sequence over `max_length`
    loses the start of its prompt: the completion, what is learned, stays whole up to max_length - 1 tokens."""
    ids, labels = [], []
    for example in examples:
        prompt, completion = completion_tokens(tokenizer, example)
        completion = completion[:max_length - 1]
        prompt = prompt[max(0, len(prompt) + len(completion) - max_length):]
        ids.append(prompt + completion)
        labels.append([IGNORE] * len(prompt) + completion)
    return Encoded(ids, None, labels, "completion", tokenizer.eos_token_id)


def completion_tokens(tokenizer, example: Completion) -> tuple[list[int], list[int]]:
    """(prompt, completion) token ids. A plain prompt is tokenised as it is (with the tokenizer's special tokens,
    e.g. a BOS) and the completion right after it, ending with the end-of-sequence token; a chat goes through the
    tokenizer's chat template: the prompt is the conversation before the answer with the template's opening of
    an assistant turn, and the completion the rest of the whole conversation (the answer and the turn's end)."""
    if isinstance(example.prompt, str):
        end = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
        return (tokenizer(example.prompt)["input_ids"],
                tokenizer(example.completion, add_special_tokens=False)["input_ids"] + end)
    if not tokenizer.chat_template:
        raise ValueError('chat rows ({"messages": ...}) need a tokenizer with a chat template, and this model\'s '
                         'has none: write {"prompt", "completion"} rows instead')
    turns = [{"role": role, "content": content} for role, content in example.prompt]
    prompt = _chat_ids(tokenizer, turns, add_generation_prompt=True)
    whole = _chat_ids(tokenizer, [*turns, {"role": "assistant", "content": example.completion}])
    if whole[:len(prompt)] != prompt:
        raise ValueError("this tokenizer's chat template does not render a conversation before its answer as the "
                         "start of the whole conversation, so the answer's tokens cannot be told apart: write "
                         '{"prompt", "completion"} rows instead')
    return prompt, whole[len(prompt):]


def _chat_ids(tokenizer, messages: list[dict], **options) -> list[int]:
    return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **options)["input_ids"])


def completion_metric_names(data: Encoded) -> tuple[str, ...]:
    """Loss and perplexity; exact match first (the primary metric) when every completion is a short answer."""
    short = all(len(_answer(data, i)) <= EXACT_MATCH_TOKENS for i in range(len(data)))
    return COMPLETION_METRICS if short else COMPLETION_LOSSES


def _answer(data: Encoded, i: int) -> list[int]:
    return _until_end(data.input_ids[i][data.prompt_length(i):], data.eos_id)


def _until_end(tokens: list[int], eos_id: int | None) -> list[int]:
    """The tokens before the end-of-sequence token (all of them without one)."""
    return tokens[:tokens.index(eos_id)] if eos_id in tokens else tokens


@torch.no_grad()
def completion_metrics(model: torch.nn.Module, data: Encoded, metric_names, batch_size: int, pad_id: int,
                       device: torch.device, max_tokens: int | None = None) -> dict[str, float]:
    """The mean loss per completion token, its perplexity, and the share of greedy completions equal to the
    reference up to the end-of-sequence token. Greedy decoding writes a reference exactly when each of its tokens,
    up to and including the first end token, is the most likely one after the tokens before it: so the loss's
    own pass scores exact match too (`greedy_matches`), with no token generated (a generation would run the
    sequence again once per answer token)."""
    total, tokens, matched = 0.0, 0, 0
    for _, logits, labels in eval_outputs(model, data, batch_size, pad_id, device, max_tokens):
        summed, count = completion_loss_sum(logits, labels)
        total, tokens = total + float(summed), tokens + count
        matched += int(greedy_matches(logits, labels, data.eos_id).sum())
    loss = total / max(tokens, 1)
    scores = {"loss": loss, "perplexity": math.exp(loss), "exact_match": matched / max(len(data), 1)}
    return {name: scores[name] for name in metric_names}


def greedy_matches(logits: torch.Tensor, labels: torch.Tensor, eos_id: int | None) -> torch.Tensor:
    """Per row: whether the greedy completion of its prompt is its labelled completion, read up to the first
    `eos_id` (what follows it, e.g. a chat template's newline, is not the answer): every labelled token up to
    there is the argmax of the logits before it (they predict the next token, as in completion_loss_sum). A
    completion cut at max_length has no end token: its kept tokens are compared, as a generation of that many
    tokens would be. `logits`: at `scored_positions(labels)`, one row each. Exact up to float rounding: another
    batch shape can flip a near-tie (more likely in bf16)."""
    targets = labels[:, 1:]
    labelled = targets != IGNORE
    answer = labelled.clone()
    if eos_id is not None:
        is_end = targets == eos_id
        answer &= (is_end.cumsum(1) - is_end.long()) == 0  # up to and including the first end token
    wrong = torch.zeros_like(labelled)
    wrong[labelled] = logits.argmax(-1) != completion_targets(labels)
    return ~(wrong & answer).any(1)


EXAMPLE_TOKENS = 64  # the model card's example generation stops here, or at the end token


def example_generation(model: torch.nn.Module, tokenizer, data: Encoded, pad_id: int, device: torch.device
                       ) -> dict[str, str] | None:
    """The first dev example's prompt, its reference completion and the model's greedy one (text), for the model
    card: what the numbers mean, in words. None without dev examples."""
    if not len(data):
        return None
    start = data.prompt_length(0)
    prompt, reference = data.input_ids[0][:start], _answer(data, 0)
    generated = _until_end(greedy_completions(model, [prompt], [EXAMPLE_TOKENS], 1, pad_id, data.eos_id, device)[0],
                           data.eos_id)
    return {name: tokenizer.decode(ids, skip_special_tokens=True).strip()
            for name, ids in (("prompt", prompt), ("reference", reference), ("generated", generated))}


@torch.no_grad()
def greedy_completions(model: torch.nn.Module, prompts: list[list[int]], max_new_tokens: list[int],
                       batch_size: int, pad_id: int, eos_id: int | None, device: torch.device) -> list[list[int]]:
    """Each prompt's greedy continuation, up to its end-of-sequence token or its own token limit. The whole
    sequence runs again at every step (no cache: answers are short, and it is the forward that training scored),
    padded on the left with positions counted from each row's first real token, so that every row's next token
    is read at the last position."""
    model.eval()
    out: list[list[int]] = [[] for _ in prompts]
    for rows in eval_batches(prompts, batch_size):
        for _ in range(max(max_new_tokens[i] for i in rows)):
            live = [i for i in rows if len(out[i]) < max_new_tokens[i] and not (out[i] and out[i][-1] == eos_id)]
            if not live:
                break
            with autocast(device):
                logits = model(**_left_padded([prompts[i] + out[i] for i in live], pad_id, device), logits_to_keep=1)
            for i, token in zip(live, logits[:, -1].argmax(-1).tolist(), strict=True):
                out[i].append(token)
    return out


def _left_padded(sequences: list[list[int]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, width - len(sequence):] = torch.tensor(sequence)
        mask[row, width - len(sequence):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "position_ids": positions.to(device)}
