"""Decoder language models: completion data (plain and chat), the loss on completion tokens only, causal masks
with prefixes, a whole search on a tiny LLaMA with grouped-query attention, and the export that stock peft loads
and generates from. The tiny decoder and its tasks are tests/tiny.py's make_tiny_llama and make_completion_task.
"""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch

import pruning
from pruning import LoraSpec, ScheduleSpec, SearchSpec, SpaceSpec, SpecError, TaskSpec, TrainSpec
from pruning.data import Completion, DataError, load_task
from pruning.data.loaders import read_examples
from pruning.result import RoundRecord, pareto_front
from pruning.train import IGNORE, collate, encode, loss_of, pop_labels, scored_positions
from tests.tiny import ANSWERS, make_completion_task, make_tiny_llama

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> str:
    torch.set_num_threads(1)
    return str(make_tiny_llama(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture(scope="module")
def llama_tokenizer(llama_dir):
    from pruning.backbones import load_tokenizer

    return load_tokenizer(llama_dir)


@pytest.fixture(scope="module")
def plain_task(tmp_path_factory) -> TaskSpec:
    train, dev = make_completion_task(tmp_path_factory.mktemp("completion"), n_train=192, n_dev=32)
    return TaskSpec(train=str(train), dev=str(dev), problem="completion")


@pytest.fixture(scope="module")
def chat_task(tmp_path_factory) -> TaskSpec:
    train, dev = make_completion_task(tmp_path_factory.mktemp("chat"), n_train=192, n_dev=32, chat=True)
    return TaskSpec(train=str(train), dev=str(dev), problem="completion")


def _causal_lm(llama_dir, space: SpaceSpec):
    from pruning.backbones import load_model
    from pruning.supernet import Supernet

    return Supernet(load_model(llama_dir, 1, "completion"), space).eval()


# --- data ---------------------------------------------------------------------------------------------------------


def test_completion_rows_load_plain_and_chat(plain_task, chat_task):
    plain = load_task(plain_task)
    assert (plain.problem, plain.labels, plain.metric_names) == ("completion", None, ("loss", "perplexity"))
    assert plain.train[0].completion in ANSWERS and plain.train[0].prompt.startswith("review : ")
    chat = load_task(chat_task).train[0]
    assert chat.prompt[0][0] == "user" and chat.completion in ANSWERS


@pytest.mark.parametrize("row, reason", [
    ('{"prompt": "a"}', 'missing column "completion"'),
    ('{"prompt": "a", "completion": 3}', 'column "completion" must be a string, got a number'),
    ('{"text": "a", "label": 1}', 'expected "prompt" and "completion", or "messages"'),
    ('{"messages": "hi"}', '"messages" must be an array of at least 2 messages'),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "got 1 message(s)"),
    ('{"messages": [{"role": "user", "content": "hi"}, "ok"]}', "message 2 must be an object"),
    ('{"messages": [{"role": "bot", "content": "hi"}, {"role": "assistant", "content": "ok"}]}',
     'message 1: "role" must be one of'),
    ('{"messages": [{"role": "user", "content": ["hi"]}, {"role": "assistant", "content": "ok"}]}',
     'message 1: "content" must be a string, got an array'),
    ('{"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "ok"}]}',
     "the last message must be the assistant's"),
    ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]}',
     "the last message (the completion to learn) is empty"),
    ('{"prompt": "a", "completion": "b"', "invalid JSON"),
])
def test_a_malformed_completion_row_names_its_file_and_line(tmp_path, row, reason):
    good = json.dumps({"prompt": "review : fine", "completion": "positive"})
    train = tmp_path / "train.jsonl"
    train.write_text(f"{good}\n\n{row}\n{good}\n")
    (tmp_path / "dev.jsonl").write_text(good + "\n")
    with pytest.raises(DataError) as err:
        load_task(TaskSpec(train=str(train), dev=str(tmp_path / "dev.jsonl"), problem="completion"))
    assert (err.value.path, err.value.line) == (str(train), 3)
    assert reason in err.value.reason and str(err.value).startswith(f"{train}:3: ")


def test_completion_data_is_jsonl_and_its_spec_is_checked(tmp_path):
    (tmp_path / "train.csv").write_text("prompt,completion\na,b\n")
    with pytest.raises(DataError, match=r"train.csv: completion data is JSONL"):
        load_task(TaskSpec(train=str(tmp_path / "train.csv"), dev=str(tmp_path / "train.csv"), problem="completion"))
    with pytest.raises(SpecError, match="format: completion data is JSONL"):
        TaskSpec(train="a.csv", dev="b.csv", format="csv", problem="completion").validate()
    with pytest.raises(SpecError, match="problem: a GLUE task is classification or regression"):
        TaskSpec(glue="sst2", data_dir="glue", problem="completion").validate()
    task = TaskSpec(train="a.jsonl", dev="b.jsonl", problem="completion")
    with pytest.raises(SpecError, match="train.max_length: a completion needs at least 2 tokens"):
        SearchSpec(model="m", task=task, train=TrainSpec(max_length=1)).validate()


def test_a_prompt_template_turns_classification_rows_into_completions(tmp_path):
    train, dev = tmp_path / "train.jsonl", tmp_path / "dev.jsonl"
    train.write_text('{"text": "fine film", "text_pair": "it was", "label": 1}\n'
                     '{"text": "dull film", "text_pair": "it was", "label": 0}\n')
    dev.write_text('{"text": "great", "text_pair": "it is", "label": 1}\n')
    task = TaskSpec(train=str(train), dev=str(dev), text_pair_column="text_pair",
                    prompt_template="Q: {text} / {text_pair}\nA:")
    data = load_task(task)
    assert (data.problem, data.labels, task.learned_as) == ("completion", ["0", "1"], "completion")
    assert data.train[0] == Completion("Q: fine film / it was\nA:", " 1")  # a space before the answer
    spaced = load_task(dataclasses.replace(task, prompt_template="{text} -> "))
    assert spaced.dev[0] == Completion("great -> ", "1")  # the prompt ends with whitespace: none added
    assert read_examples(task, dev, ["0", "1"]) == [Completion("Q: great / it is\nA:", " 1")]
    # label words: the answers a decoder already knows, given as text (the CLI's and the form's) or a mapping
    worded = dataclasses.replace(task, label_words="0=negative, 1=positive")
    assert load_task(worded).train[:2] == [Completion("Q: fine film / it was\nA:", " positive"),
                                           Completion("Q: dull film / it was\nA:", " negative")]
    assert read_examples(worded, dev, ["0", "1"]) == [Completion("Q: great / it is\nA:", " positive")]
    with pytest.raises(SpecError, match=r"label_words: no word for label\(s\) '0'; the data's labels are '0', '1'"):
        load_task(dataclasses.replace(task, label_words={"1": "positive"}))


@pytest.mark.parametrize("words, message", [
    ("0negative", "write label=word pairs separated by commas"),
    ({"0": "yes", "1": "yes"}, "two labels share a word"),
    ({"0": " "}, "every label needs a non-empty word"),
])
def test_bad_label_words_are_refused(words, message):
    with pytest.raises(SpecError, match=f"label_words: {message}"):
        TaskSpec(train="a.csv", dev="b.csv", prompt_template="{text}", label_words=words).validate()
    with pytest.raises(SpecError, match="label_words: label words are the answers of label generation"):
        TaskSpec(train="a.csv", dev="b.csv", label_words={"0": "no", "1": "yes"}).validate()


@pytest.mark.parametrize("template, problem, message", [
    ("{text}: {label}", "classification", "use {text} (and {text_pair} for sentence pairs), no other fields"),
    ("no field", "classification", "use {text} (and {text_pair} for sentence pairs), no other fields; got none"),
    ("{text} {", "classification", "not a valid template"),
    ("{text}", "regression", "labels are generated for classification, not regression"),
])
def test_a_bad_prompt_template_is_refused(template, problem, message):
    with pytest.raises(SpecError, match=re.escape(f"prompt_template: {message}")):
        TaskSpec(train="a.csv", dev="b.csv", problem=problem, prompt_template=template).validate()


# --- tokens, labels and the loss ------------------------------------------------------------------------------------


def test_the_loss_is_on_the_completion_tokens_only(llama_tokenizer):
    tok = llama_tokenizer
    examples = [Completion("review : the plot was dull sentiment :", "negative"),
                Completion("review : fun sentiment :", "positive")]
    data = encode(tok, examples, 64, "completion")
    for example, ids, labels in zip(examples, data.input_ids, data.labels, strict=True):
        prompt = tok(example.prompt)["input_ids"]
        completion = tok(example.completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert ids == prompt + completion
        assert labels == [IGNORE] * len(prompt) + completion  # the prompt's tokens are masked
    batch = collate(data, [0, 1], tok.pad_token_id, CPU)
    assert batch["labels"][1, len(data.input_ids[1]):].eq(IGNORE).all()  # and so is the padding
    logits = torch.randn(*batch["input_ids"].shape, len(tok), requires_grad=True)
    scored = scored_positions(batch["labels"])
    loss = loss_of(logits[scored], batch["labels"], "completion")  # the model computes the scored rows only
    # by hand: the logits at t predict token t + 1, for the completion tokens only
    terms = [torch.nn.functional.cross_entropy(logits[row, t - 1], batch["labels"][row, t])
             for row in range(2) for t in range(batch["labels"].shape[1]) if batch["labels"][row, t] != IGNORE]
    torch.testing.assert_close(loss, torch.stack(terms).mean())
    loss.backward()
    for row in range(2):
        start = data.prompt_length(row)
        assert not scored[row, :start - 1].any()  # nothing that predicts the prompt is scored
        assert scored[row, start - 1:len(data.input_ids[row]) - 1].all() and not scored[row, -1]
        assert logits.grad[row, :start - 1].eq(0).all()
        assert logits.grad[row, start - 1].abs().sum() > 0


def test_chat_rows_go_through_the_chat_template(llama_tokenizer, chat_task):
    tok = llama_tokenizer
    example = load_task(chat_task).train[0]
    messages = [{"role": r, "content": c} for r, c in example.prompt]
    data = encode(tok, [example], 64, "completion")
    whole = tok.apply_chat_template([*messages, {"role": "assistant", "content": example.completion}],
                                    tokenize=True, return_dict=True)["input_ids"]
    prompt = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                     return_dict=True)["input_ids"]
    assert data.input_ids[0] == list(whole)
    assert data.prompt_length(0) == len(prompt)  # the template's "<|im_start|> assistant" belongs to the prompt
    answer = tok.convert_ids_to_tokens(data.labels[0][len(prompt):])
    assert answer == [example.completion, "<|im_end|>"]
    with pytest.raises(ValueError, match="chat template"):
        no_template = tok.__class__.from_pretrained(tok.name_or_path)
        no_template.chat_template = None
        encode(no_template, [example], 64, "completion")


def test_a_long_prompt_loses_its_start_and_the_completion_is_kept(llama_tokenizer):
    example = Completion("review : " + "the movie " * 20 + "sentiment :", "positive")
    full = encode(llama_tokenizer, [example], 512, "completion")
    cut = encode(llama_tokenizer, [example], 10, "completion")
    assert len(cut.input_ids[0]) == 10 and cut.input_ids[0] == full.input_ids[0][-10:]
    assert cut.labels[0][-2:] == full.labels[0][-2:] and cut.prompt_length(0) == 8


def test_exact_match_reads_each_answer_up_to_its_end_token():
    from pruning.completion import greedy_matches

    eos, vocab = 2, 10
    # labels: a prompt of 2 tokens (IGNORE), then the answer; the logits at t predict token t + 1
    labels = torch.tensor([[IGNORE, IGNORE, 5, 2, 9],         # 5, end, then a newline that is not the answer
                           [IGNORE, IGNORE, 5, 2, IGNORE],    # the same answer, padded
                           [IGNORE, IGNORE, 6, 2, IGNORE],
                           [IGNORE, IGNORE, 5, 2, IGNORE]])
    greedy = [[5, 2, 0], [5, 2, 0], [6, 7, 0], [4, 2, 0]]  # what each row's argmax reads after the prompt
    logits = torch.zeros(4, 5, vocab)
    for row, tokens in enumerate(greedy):
        for offset, token in enumerate(tokens):
            logits[row, 1 + offset, token] = 1.0
    logits = logits[scored_positions(labels)]  # what the model computes: the scored positions' rows
    assert greedy_matches(logits, labels, eos).tolist() == [True, True, False, False]
    assert greedy_matches(logits, labels, None).tolist() == [False, True, False, False]  # no end: all of it


def test_exact_match_is_what_greedy_generation_writes(llama_dir, llama_tokenizer):
    from pruning.completion import completion_metrics, greedy_completions, greedy_matches
    from pruning.train import Encoded

    net = _causal_lm(llama_dir, SpaceSpec(types=("prefix",)))
    prompts = [llama_tokenizer(text)["input_ids"] for text in ("review : fun", "the plot was dull and cold , it",
                                                              "sentiment :", "a b c")]
    written = greedy_completions(net, prompts, [3] * 4, 8, llama_tokenizer.pad_token_id, None, CPU)
    end = written[0][1]  # call row 0's second token the end token: what follows it is not read
    answers = [written[0][:2] + [7], written[1][:1] + [(written[1][1] + 1) % 500], written[2], written[3][:2]]
    data = Encoded([p + a for p, a in zip(prompts, answers, strict=True)], None,
                   [[IGNORE] * len(p) + a for p, a in zip(prompts, answers, strict=True)], "completion", end)
    scores = completion_metrics(net, data, ("exact_match", "loss"), 2, llama_tokenizer.pad_token_id, CPU)
    generated = greedy_completions(net, prompts, [len(a) for a in answers], 8, llama_tokenizer.pad_token_id, end,
                                   CPU)

    def answer(tokens):
        return tokens[:tokens.index(end) + 1] if end in tokens else tokens

    by_generation = [answer(g) == answer(a) for g, a in zip(generated, answers, strict=True)]
    assert by_generation[:2] == [True, False] and scores["exact_match"] == sum(by_generation) / 4
    batch = collate(data, list(range(4)), llama_tokenizer.pad_token_id, CPU)
    labels = pop_labels(batch, "completion")
    with torch.no_grad():
        assert greedy_matches(net(**batch), labels, end).tolist() == by_generation  # row by row


def test_a_loss_front_prefers_the_lower_metric():
    def record(params, metric):
        return RoundRecord(1, [], params, params, "loss", metric, None, [], 0.0)

    # a round's record holds the metric it started from: 2.0 at 1000 parameters, 1.5 at 500, then 1.7 at 300
    records, final = [record(500, 2.0), record(300, 1.5)], 1.7
    assert [p.on_front for p in pareto_front(1000, records, final, lower_is_better=True)] == [False, True, True]
    assert [p.on_front for p in pareto_front(1000, records, final)] == [True, False, True]


# --- the supernet on a causal language model ------------------------------------------------------------------------


def _batch():
    ids = torch.randint(5, 500, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    ids[1, 6:], mask[1, 6:] = 2, 0  # right padding with pad = eos, as SmolLM2 has it
    return {"input_ids": ids, "attention_mask": mask}


def test_new_lora_and_adapter_units_leave_the_logits_unchanged(llama_dir):
    from pruning.backbones import load_model

    batch = _batch()
    bare = load_model(llama_dir, 1, "completion")(**batch).logits
    net = _causal_lm(llama_dir, SpaceSpec(types=("lora", "adapter")))
    assert net.head_parameters() == []  # a language model's output layer is no task head: only units train
    assert len(net.units) == 8 and all(p.requires_grad for p in net.trainable_parameters())
    torch.testing.assert_close(net(**batch), bare)


def test_the_output_layer_computes_the_scored_positions_only(llama_dir):
    net = _causal_lm(llama_dir, SpaceSpec())  # every unit type: prefixes lengthen no sequence the head sees
    batch = _batch()
    labels = batch["input_ids"].clone()
    labels[:, :3] = IGNORE  # a prompt of 3 tokens
    labels[batch["attention_mask"] == 0] = IGNORE
    scored = scored_positions(labels)
    seen = []
    head = net.model.get_output_embeddings()
    handle = head.register_forward_hook(lambda _module, args, _out: seen.append(tuple(args[0].shape)))
    with torch.no_grad():
        full, rows = net(**batch), net(**batch, scored=scored)
    handle.remove()
    assert seen[1] == (int(scored.sum()), head.in_features) and rows.shape == (int(scored.sum()), head.out_features)
    torch.testing.assert_close(rows, full[scored])
    assert len(head._forward_pre_hooks) == 0  # the selection does not outlive the call


def test_with_prefixes_no_position_attends_to_a_later_token(llama_dir):
    net = _causal_lm(llama_dir, SpaceSpec())  # LoRA on every projection, adapters, per-layer prefixes
    with torch.no_grad():  # make every unit change the function: LoRA's B and the adapters' up start at zero
        for name, param in net.named_parameters():
            if param.requires_grad and ("lora_B" in name or ".up." in name):
                param.normal_(0, 0.05)
    batch = _batch()
    logits = net(**batch)
    for position in (3, 6):
        changed = {k: v.clone() for k, v in batch.items()}
        changed["input_ids"][0, position] = 7
        after = net(**changed)
        torch.testing.assert_close(after[0, :position], logits[0, :position])  # earlier positions: untouched
        assert not torch.allclose(after[0, position:], logits[0, position:])
    alone = net(input_ids=batch["input_ids"][1:, :6], attention_mask=batch["attention_mask"][1:, :6])
    torch.testing.assert_close(alone, logits[1:, :6], rtol=1e-4, atol=1e-4)  # padding on the right changes nothing
    prefix = net.unit("prefix.0")
    assert prefix.keys.shape[0] == 2  # one prefix per key/value head (4 query heads share 2)
    with prefix.switched_off():
        assert not torch.allclose(net(**batch), logits)


def test_greedy_completions_read_the_same_tokens_padded_or_alone(llama_dir, llama_tokenizer):
    from pruning.completion import greedy_completions

    net = _causal_lm(llama_dir, SpaceSpec(types=("prefix",)))
    prompts = [llama_tokenizer(text)["input_ids"] for text in ("review : fun", "the plot was dull and cold , it")]
    together = greedy_completions(net, prompts, [4, 4], 8, llama_tokenizer.pad_token_id, None, CPU)
    for prompt, tokens in zip(prompts, together, strict=True):
        generated = net.generate(input_ids=torch.tensor([prompt]), max_new_tokens=4, do_sample=False,
                                 pad_token_id=llama_tokenizer.pad_token_id, eos_token_id=None)
        assert tokens == generated[0, len(prompt):].tolist()


# --- search, export, stock peft ---------------------------------------------------------------------------------------


def _spec(model, task, **space) -> SearchSpec:
    return SearchSpec(model=model, task=task, budget=8000, space=SpaceSpec(**space),
                      schedule=ScheduleSpec(rounds=2, steps_per_round=5, eval_examples=32, learn_max_share=0.25),
                      train=TrainSpec(steps=60, batch_size=16, lr=1e-2, eval_batch_size=32, max_length=32))


@pytest.fixture(scope="module")
def searched_chat(tmp_path_factory, llama_dir, chat_task):
    out = tmp_path_factory.mktemp("decoder-search") / "out"
    return out, pruning.search(_spec(llama_dir, chat_task), out)


def test_a_whole_search_on_a_decoder_with_every_module_type(searched_chat, llama_dir):
    out, result = searched_chat
    assert result.metric_name == "exact_match" and set(result.metrics) == {"exact_match", "loss", "perplexity"}
    assert 0 <= result.metrics["exact_match"] <= 1 and result.metrics["perplexity"] == pytest.approx(
        2.718281828 ** result.metrics["loss"])
    assert result.head_params == 0 and result.trainable_params <= result.budget_params == 8000
    learn = json.loads((out / "trace.json").read_text())["learn"]
    assert learn["learned"] and learn["validation_loss"] < learn["threshold"] < learn["chance_loss"]
    assert result.metrics["loss"] < learn["chance_loss"] / 10  # the answers' format at least is learned
    assert [r.chance_metric for r in result.rounds] == [learn["chance_metric"]] * 2
    config = json.loads((out / "peftsearch_config.json").read_text())
    assert config["problem"] == "completion" and config["metric_names"] == ["exact_match", "loss", "perplexity"]
    assert pruning.evaluate(out, llama_dir) == result.metrics  # the reloaded model scores what was measured
    card = (out / "README.md").read_text()
    assert "prompt/completion or chat rows" in card


def test_the_model_card_shows_an_example_generation(searched_chat, llama_dir, chat_task, llama_tokenizer):
    from pruning.completion import EXAMPLE_TOKENS, completion_tokens, greedy_completions

    out, _ = searched_chat
    example = json.loads((out / "peftsearch_config.json").read_text())["example_generation"]
    first = load_task(chat_task).dev[0]
    prompt, reference = completion_tokens(llama_tokenizer, first)
    assert example["reference"] == first.completion  # the answer's text, without the turn's end
    model = pruning.load(out, llama_dir)
    generated = greedy_completions(model, [prompt], [EXAMPLE_TOKENS], 1, 2, llama_tokenizer.eos_token_id, CPU)[0]
    assert example["generated"] == llama_tokenizer.decode(
        generated[:generated.index(2)] if 2 in generated else generated, skip_special_tokens=True).strip()
    assert example["prompt"] == llama_tokenizer.decode(prompt, skip_special_tokens=True).strip()
    card = (out / "README.md").read_text()
    assert "## Example generation (the first dev example, greedy)" in card
    assert f"Generated: `{example['generated']!r}`" in card and f"Reference: `{first.completion!r}`" in card


def test_the_chance_loss_of_a_completion_task_is_the_backbones_own(llama_dir, chat_task):
    from pruning.backbones import load_model
    from pruning.pipeline import _Context
    from pruning.supernet import Supernet
    from pruning.train import mean_loss

    ctx = _Context.prepare(_spec(llama_dir, chat_task))
    supernet = ctx.supernet()  # its prefixes change the function from the start
    loss, metric = ctx.chance(supernet)
    bare = Supernet(load_model(llama_dir, 1, "completion"), SpaceSpec(), units=[]).eval()  # no unit at all
    assert loss == pytest.approx(mean_loss(bare, ctx.validation, 32, 2, CPU))
    assert loss != pytest.approx(mean_loss(supernet, ctx.validation, 32, 2, CPU))
    assert metric == ctx.evaluate(bare, ctx.validation)["exact_match"]
    assert ctx.task.metric_names == ("exact_match", "loss", "perplexity")  # answers of one token and the end


def test_stock_peft_generates_what_pruning_load_generates(tmp_path, llama_dir, plain_task, llama_tokenizer):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from pruning.completion import greedy_completions

    out = tmp_path / "out"
    result = pruning.search(_spec(llama_dir, plain_task, types=("lora",)), out)
    assert result.configuration["stock_peft"]["complete"]
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["task_type"] == "CAUSAL_LM" and adapter["modules_to_save"] in (None, [])
    stock = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama_dir), out).eval()
    ours = pruning.load(out)
    prompts = [llama_tokenizer(e.prompt)["input_ids"] for e in load_task(plain_task).dev[:4]]
    greedy = greedy_completions(ours, prompts, [6] * 4, 4, llama_tokenizer.pad_token_id, None, CPU)
    for prompt, tokens in zip(prompts, greedy, strict=True):
        ids = torch.tensor([prompt])
        with torch.no_grad():
            torch.testing.assert_close(stock(input_ids=ids).logits, ours(input_ids=ids), rtol=1e-5, atol=1e-5)
        generated = stock.generate(input_ids=ids, max_new_tokens=6, do_sample=False, eos_token_id=None,
                                   pad_token_id=llama_tokenizer.pad_token_id)
        assert generated[0, len(prompt):].tolist() == tokens == \
            ours.generate(input_ids=ids, max_new_tokens=6, do_sample=False, eos_token_id=None,
                          pad_token_id=llama_tokenizer.pad_token_id)[0, len(prompt):].tolist()
    merged = AutoModelForCausalLM.from_pretrained(pruning.merge(out, tmp_path / "merged")).eval()  # LoRA folded in
    ids = torch.tensor([prompts[0]])
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, ours(input_ids=ids), rtol=1e-5, atol=1e-5)
    assert merged.generate(input_ids=ids, max_new_tokens=6, do_sample=False, eos_token_id=None,
                           pad_token_id=llama_tokenizer.pad_token_id)[0, len(prompts[0]):].tolist() == greedy[0]
    base = _causal_lm(llama_dir, SpaceSpec(types=("lora",), lora=LoraSpec(rank=1)))
    base.remove(base.unit_keys())
    untuned = greedy_completions(base, prompts, [6] * 4, 4, llama_tokenizer.pad_token_id, None, CPU)
    assert untuned != greedy  # the adapter's weights are what makes them agree


def test_a_decoder_classifies_with_a_head(tmp_path, llama_dir, toy_task):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    spec = _spec(llama_dir, TaskSpec(train=toy_task[0], dev=toy_task[1]), types=("lora",))
    result = pruning.fit(spec, tmp_path / "out")
    assert result.metric_name == "accuracy" and result.head_params == 64 * 2  # LLaMA's score: no bias
    adapter = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert adapter["modules_to_save"] == ["score"]
    base = AutoModelForSequenceClassification.from_pretrained(llama_dir, num_labels=2, pad_token_id=2)
    stock = PeftModel.from_pretrained(base, tmp_path / "out").eval()
    batch = {"input_ids": torch.tensor([[46, 75, 23, 2, 2], [46, 75, 23, 25, 30]]),
             "attention_mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])}
    with torch.no_grad():
        torch.testing.assert_close(stock(**batch).logits, pruning.load(tmp_path / "out")(**batch))


def test_the_cli_searches_a_completion_task(tmp_path, llama_dir, plain_task, capsys):
    from pruning.cli import main

    code = main(["--model", llama_dir, "--train", plain_task.train, "--dev", plain_task.dev, "--problem",
                 "completion", "--budget", "8000", "--rounds", "2", "--steps-per-round", "2", "--steps", "4",
                 "--batch-size", "8", "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "(prompt/completion or chat rows), completion" in captured.out
    assert "dev metrics        exact_match " in captured.out and "PEFT parameters" in captured.out
    assert main(["--model", llama_dir, "--train", plain_task.train, "--dev", plain_task.dev, "--problem",
                 "completion", "--max-length", "1", "--out", str(tmp_path / "o")]) == 2
    assert "train.max_length: a completion needs at least 2 tokens" in capsys.readouterr().err


def test_speed_mode_prunes_key_value_groups_of_a_decoder(tmp_path, llama_dir, plain_task):
    """Grouped-query attention (4 query heads on 2 key/value heads): half of each layer's groups go, each with
    both query heads that share it; the reloaded model scores what the search measured."""
    import dataclasses

    from pruning import BackboneSpec
    from pruning.arch import architecture_of, projection

    spec = _spec(llama_dir, plain_task)
    spec = dataclasses.replace(spec, train=TrainSpec(
        steps=12, batch_size=16, lr=1e-2, eval_batch_size=32, max_length=32), backbone=BackboneSpec(
        enabled=True, head_ratio=0.5, neuron_ratio=0.25, max_drop=None),
        schedule=dataclasses.replace(spec.schedule, unlearned="prune"))  # pruned, learned in 3 steps or not
    result = pruning.search(spec, tmp_path / "out")
    heads = result.configuration["backbone"]["heads"]
    assert all(kept in ([0, 1], [2, 3]) for kept in heads.values())  # one whole group of two per layer
    model = pruning.load(tmp_path / "out", llama_dir)
    arch = architecture_of(model.model)
    assert projection(model.model, arch, 0, arch.k).out_features == 16  # one key/value head of 16 left
    assert result.backbone_params < result.backbone_params_before
    assert pruning.evaluate(tmp_path / "out", llama_dir) == result.metrics


def test_a_decoder_classifies_by_generating_the_label(tmp_path, llama_dir, toy_task):
    spec = _spec(llama_dir, TaskSpec(train=toy_task[0], dev=toy_task[1], prompt_template="review : {text} ->"),
                 types=("lora",))
    result = pruning.fit(spec, tmp_path / "out")
    assert result.metric_name == "exact_match" and result.head_params == 0  # the language model's own output
    config = json.loads((tmp_path / "out" / "peftsearch_config.json").read_text())
    assert config["problem"] == "completion" and config["labels"] == ["0", "1"]
    assert "classification by generating the label: 0, 1, prompt 'review : {text} ->'" in (
        tmp_path / "out" / "README.md").read_text()
    # a data file is read through the result's template and label map (other batches: float rounding apart)
    assert pruning.evaluate(tmp_path / "out", llama_dir, data=toy_task[1]) == pytest.approx(result.metrics, rel=1e-6)


def test_gradient_checkpointing_trains_every_unit_type_as_without_it(tmp_path, llama_dir, plain_task, monkeypatch):
    """Activations recomputed in the backward pass (non-reentrant): LoRA, adapters and prefixes inside the
    checkpointed layers get the same gradients, so the same steps give the same weights."""
    import transformers.modeling_utils
    from safetensors.torch import load_file

    calls = []
    original = transformers.modeling_utils.checkpoint  # what gradient_checkpointing_enable binds

    def counted(*args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.modeling_utils, "checkpoint", counted)
    spec = dataclasses.replace(_spec(llama_dir, plain_task), train=TrainSpec(steps=4, batch_size=8, lr=1e-2,
                                                                             eval_batch_size=32, max_length=32))
    units = ["lora.0", "adapter.1", "prefix.2", "lora.3"]
    weights = {}
    for on in (False, True):
        calls.clear()
        checkpointed = dataclasses.replace(spec, train=dataclasses.replace(spec.train, gradient_checkpointing=on))
        pruning.fit(checkpointed, tmp_path / str(on), units)
        assert (set(calls) == {False}) if on else not calls  # every layer's forward, non-reentrant
        weights[on] = load_file(tmp_path / str(on) / "peftsearch_weights.safetensors")
    assert weights[True].keys() == weights[False].keys() and len(weights[True]) > 0
    for name, tensor in weights[False].items():
        torch.testing.assert_close(weights[True][name], tensor, rtol=1e-4, atol=1e-6, msg=name)
