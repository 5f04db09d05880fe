"""Load a task's train/dev examples: the GLUE TSV layouts, or local CSV, TSV and JSONL files.

Every problem with the input is a `DataError` that names the file, the 1-based line and the reason, so the CLI
and the service can tell users exactly what to fix.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from .metrics import COMPLETION_METRICS

if TYPE_CHECKING:
    from pruning.spec import TaskSpec


# A completion task's metrics before its answers are tokenised (exact match joins them when the answers are short)
COMPLETION_LOSSES = tuple(m for m in COMPLETION_METRICS if m != "exact_match")


class DataError(ValueError):
    """Malformed input. str(err) == f"{path}:{line}: {reason}"; line is 1-based, 0 when it is the whole file (then
    str(err) == f"{path}: {reason}")."""

    def __init__(self, path: str | Path, line: int, reason: str):
        super().__init__(self.naming(path, line, reason))
        self.path = str(path)
        self.line = line
        self.reason = reason

    @staticmethod
    def naming(path: str | Path, line: int, reason: str) -> str:
        """The message with `path` for the file (a name the user knows, e.g. the uploaded file's)."""
        return f"{path}{f':{line}' if line else ''}: {reason}"

    def __reduce__(self) -> tuple[type, tuple[str, int, str]]:
        # Exceptions pickle through `args` (the message alone); the worker sends errors across processes.
        return DataError, (self.path, self.line, self.reason)


@dataclass(frozen=True)
class Example:
    text: str
    text_pair: str | None
    label: int | float  # class index (classification) or target value (regression)


@dataclass(frozen=True)
class Completion:
    """A decoder example: the model reads `prompt` and learns to write `completion`. A chat row's prompt is its
    messages before the last, as (role, content) pairs; the last, the assistant's, is the completion."""

    prompt: str | tuple[tuple[str, str], ...]
    completion: str


@dataclass
class TaskData:
    name: str  # "glue:sst2" or the train file name
    problem: str  # "classification" | "regression" | "completion"
    labels: list[str] | None  # class names in index order; None for regression and completion
    metric_names: tuple[str, ...]  # the first is the primary metric
    train: list[Example] | list[Completion]
    dev: list[Example] | list[Completion]

    @property
    def num_labels(self) -> int:
        return len(self.labels) if self.labels is not None else 1

    @property
    def primary_metric(self) -> str:
        return self.metric_names[0]


def load_task(task: TaskSpec, seed: int = 0) -> TaskData:
    """Read train and dev; `task.max_train_examples` keeps a seeded subsample of train (dev is never cut)."""
    task = task.validate()
    data = _load_glue(task) if task.glue else _load_local(task)
    if task.prompt_template is not None:
        written = answers(task, data.labels)
        data = TaskData(data.name, "completion", data.labels, COMPLETION_LOSSES,
                        [prompted(task, e, written) for e in data.train],
                        [prompted(task, e, written) for e in data.dev])
    if task.max_train_examples is not None:
        data.train = subsample(data.train, task.max_train_examples, seed)
    return data


def prompted(task: TaskSpec, example: Example, written: list[str]) -> Completion:
    """A classification example as a completion (task.prompt_template): the prompt from its text(s), answered by
    what `written` (answers(task, labels)) holds for its label."""
    prompt = task.prompt_template.format(text=example.text, text_pair=example.text_pair or "")
    answer = written[int(example.label)]
    return Completion(prompt, answer if prompt[-1:].isspace() else " " + answer)


def answers(task: TaskSpec, labels: list[str]) -> list[str]:
    """What label generation writes for each label index: its word, or its name without label_words."""
    from pruning.spec import SpecError

    if task.label_words is None:
        return list(labels)
    missing = [label for label in labels if label not in task.label_words]
    if missing:
        raise SpecError("task.label_words", f"no word for label(s) {', '.join(map(repr, missing))}; the data's "
                                            f"labels are {', '.join(map(repr, labels))}")
    return [task.label_words[label] for label in labels]


def subsample(examples: list[Example], n: int, seed: int) -> list[Example]:
    """At most `n` examples drawn with `random.Random(seed)`, kept in their original order."""
    if len(examples) <= n:
        return list(examples)
    keep = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in keep]


# --- GLUE ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _GlueLayout:
    folder: str
    text: str
    text_pair: str | None
    label: str
    labels: tuple[str, ...] | None  # None: regression
    metrics: tuple[str, ...]
    implied_header: tuple[str, ...] | None = None  # for files without a header row (CoLA): names its columns


_GLUE = {
    "sst2": _GlueLayout("SST-2", "sentence", None, "label", ("0", "1"), ("accuracy",)),
    "mrpc": _GlueLayout("MRPC", "#1 String", "#2 String", "Quality", ("0", "1"), ("f1", "accuracy")),
    "cola": _GlueLayout("CoLA", "sentence", None, "label", ("0", "1"), ("mcc", "accuracy"),
                        implied_header=("source", "label", "original_mark", "sentence")),
    "stsb": _GlueLayout("STS-B", "sentence1", "sentence2", "score", None, ("pearson", "spearman")),
    "rte": _GlueLayout("RTE", "sentence1", "sentence2", "label", ("entailment", "not_entailment"), ("accuracy",)),
    "qnli": _GlueLayout("QNLI", "question", "sentence", "label", ("entailment", "not_entailment"), ("accuracy",)),
}


def _load_glue(task: TaskSpec) -> TaskData:
    assert task.glue is not None and task.data_dir is not None  # task.validate() checked both
    layout = _GLUE[task.glue]
    folder = Path(task.data_dir) / layout.folder
    return TaskData(
        name=task.name,
        problem="classification" if layout.labels else "regression",
        labels=list(layout.labels) if layout.labels else None,
        metric_names=layout.metrics,
        train=read_glue_file(task.glue, folder / "train.tsv"),
        dev=read_glue_file(task.glue, folder / "dev.tsv"),
    )


def read_glue_file(glue: str, path: str | Path) -> list[Example]:
    """One split of a GLUE task, e.g. read_glue_file("mrpc", "glue/MRPC/dev.tsv")."""
    layout = _GLUE[glue]
    columns = [c for c in (layout.text, layout.text_pair, layout.label) if c is not None]
    records = _table(path, _tsv_lines(_read_text(path)), columns, layout.implied_header)
    raws = _raw_examples(path, records, layout.text, layout.text_pair, layout.label, regression=not layout.labels)
    if not layout.labels:
        return _regression_examples(raws)
    return _index_labels(path, raws, list(layout.labels), f"the {layout.folder} labels")


def _tsv_lines(text: str) -> Iterator[tuple[int, list[str]]]:
    # No quote processing (csv.QUOTE_NONE): GLUE sentences hold unbalanced quotes, e.g. MRPC's `"The foodservice`.
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if line.strip():
            yield number, line.split("\t")


# --- Local CSV / TSV / JSONL --------------------------------------------------------------------------------

_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl"}


def _load_local(task: TaskSpec) -> TaskData:
    assert task.train is not None and task.dev is not None  # task.validate() checked both
    if task.problem == "completion":
        # exact match joins these once the completions are tokenised and found short (train.completion_metrics)
        return TaskData(Path(task.train).name, "completion", None, COMPLETION_LOSSES,
                        read_completions(task, task.train), read_completions(task, task.dev))
    train = _read_local_file(task, task.train)
    dev = _read_local_file(task, task.dev)
    name = Path(task.train).name
    if task.problem == "regression":
        return TaskData(name, "regression", None, ("pearson", "spearman"), _regression_examples(train),
                        _regression_examples(dev))

    labels = _label_order({str(r.label) for r in train})
    if len(labels) < 2:
        raise DataError(task.train, 0,
                        f"classification needs at least 2 classes in train, found only {_show(labels[0])}")
    metrics = ("accuracy", "f1") if len(labels) == 2 else ("accuracy",)
    train_examples = _index_labels(task.train, train, labels, "the train labels")
    dev_examples = _index_labels(task.dev, dev, labels, "the train labels")
    return TaskData(name, "classification", labels, metrics, train_examples, dev_examples)


def read_examples(task: TaskSpec, path: str | Path, labels: list[str] | None) -> list[Example] | list[Completion]:
    """One file read as `task` reads its files, its labels indexed by `labels` (a result's label map, so class
    indices mean what they meant in the search); None for regression and completion. Errors name the file and
    line."""
    task = task.validate()
    if task.prompt_template is not None:
        written = answers(task, list(labels))
        return [prompted(task, e, written) for e in read_examples(
            dataclasses.replace(task, prompt_template=None, label_words=None), path, labels)]
    if task.glue:
        return read_glue_file(task.glue, path)
    if task.problem == "completion":
        return read_completions(task, path)
    raws = _read_local_file(task, str(path))
    if labels is None:
        return _regression_examples(raws)
    return _index_labels(path, raws, list(labels), "the result's labels")


def _read_local_file(task: TaskSpec, path: str) -> list[_Raw]:
    fmt = task.format or _format_of(path)
    text = _read_text(path)
    if fmt == "jsonl":
        records: Iterable[tuple[int, dict[str, Any]]] = _jsonl_records(path, text)
    else:
        columns = [c for c in (task.text_column, task.text_pair_column, task.label_column) if c is not None]
        records = _table(path, _csv_rows(path, text, "\t" if fmt == "tsv" else ","), columns)
    return _raw_examples(path, records, task.text_column, task.text_pair_column, task.label_column,
                         regression=task.problem == "regression")


CHAT_ROLES = ("system", "user", "assistant")


def read_completions(task: TaskSpec, path: str | Path) -> list[Completion]:
    """A completion task's file: JSONL rows {"prompt": ..., "completion": ...} or {"messages": [{"role": ...,
    "content": ...}, ...]} whose last message is the assistant's answer."""
    if (task.format or _format_of(str(path))) != "jsonl":
        raise DataError(path, 0, "completion data is JSONL: one {\"prompt\", \"completion\"} or "
                                 "{\"messages\": [...]} object per line")
    return [_completion(path, line, record) for line, record in _jsonl_records(path, _read_text(path))]


def _completion(path: str | Path, line: int, record: dict[str, Any]) -> Completion:
    if "messages" not in record:
        if "prompt" not in record and "completion" not in record:
            raise DataError(path, line, 'expected "prompt" and "completion", or "messages" '
                                        f"(fields found: {_quoted(record)})")
        return Completion(_text(path, line, record, "prompt"), _text(path, line, record, "completion"))
    messages = record["messages"]
    if not isinstance(messages, list) or len(messages) < 2:
        got = f"{len(messages)} message(s)" if isinstance(messages, list) else _json_kind(messages)
        raise DataError(path, line, f'"messages" must be an array of at least 2 messages (the prompt, then the '
                                    f"assistant's answer), got {got}")
    turns = []
    for number, message in enumerate(messages, start=1):
        if not isinstance(message, dict):
            raise DataError(path, line, f'message {number} must be an object with "role" and "content", '
                                        f"got {_json_kind(message)}")
        role, content = message.get("role"), message.get("content")
        if role not in CHAT_ROLES:
            raise DataError(path, line, f'message {number}: "role" must be one of {_quoted(CHAT_ROLES)}, '
                                        f"got {_show(role)}")
        if not isinstance(content, str):
            raise DataError(path, line, f'message {number}: "content" must be a string, got {_json_kind(content)}')
        turns.append((role, content))
    if turns[-1][0] != "assistant":
        raise DataError(path, line, "the last message must be the assistant's (the completion to learn), "
                                    f"got role {_show(turns[-1][0])}")
    if not turns[-1][1].strip():
        raise DataError(path, line, "the last message (the completion to learn) is empty")
    return Completion(tuple(turns[:-1]), turns[-1][1])


def _format_of(path: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix == ".json":
        raise DataError(path, 0, "JSON files are not supported: "
                                 "write one JSON object per line and name the file .jsonl")
    if suffix not in _FORMATS:
        raise DataError(path, 0, f'cannot tell the format from the extension "{suffix}": '
                                 "use .csv, .tsv or .jsonl, or set the task's format")
    return _FORMATS[suffix]


def _csv_rows(path: str | Path, text: str, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """Rows with the line each starts on (a quoted field may span lines). Default quoting, as pandas writes."""
    csv.field_size_limit(2**31 - 1)  # no limit on a field here: the service limits the upload size
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise DataError(path, start, f"malformed row: {err}") from None
        if any(field.strip() for field in row):  # csv gives [] for a blank line
            yield start, row
        start = reader.line_num + 1


def _jsonl_records(path: str | Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(path, number, f"invalid JSON: {err.msg} at column {err.colno}") from None
        if not isinstance(record, dict):
            raise DataError(path, number, f"expected a JSON object, got {_json_kind(record)}")
        yield number, record


def _label_order(labels: set[str]) -> list[str]:
    """Numeric labels sort by value ("2" before "10"); any other label set sorts as text."""
    try:
        return sorted(labels, key=lambda label: (float(label), label))
    except ValueError:
        return sorted(labels)


# --- Shared: files, tables, fields --------------------------------------------------------------------------


class _Raw(NamedTuple):
    line: int
    text: str
    text_pair: str | None
    label: str | float  # class name (classification) or target value (regression)


def _read_text(path: str | Path) -> str:
    """The file's text without a UTF-8 BOM; missing, unreadable, non-UTF-8 and empty files are DataErrors."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(path, 0, "file not found") from None
    except IsADirectoryError:
        raise DataError(path, 0, "is a directory, not a file") from None
    except OSError as err:
        raise DataError(path, 0, f"cannot read the file: {err.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        reason = f"not UTF-8 text (byte 0x{data[err.start]:02x}); save the file as UTF-8"
        raise DataError(path, line, reason) from None
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise DataError(path, 0, "empty file")
    return text


def _table(path: str | Path, rows: Iterator[tuple[int, list[str]]], columns: list[str],
           header: tuple[str, ...] | None = None) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows as {column: value}. The first row is the header unless one is given; every row must match its width."""
    header_line = 0
    if header is None:
        first = next(rows, None)
        if first is None:  # e.g. a CSV holding only separators
            raise DataError(path, 0, "no header row")
        header_line, header = first[0], tuple(name.strip() for name in first[1])
    for column in columns:
        if column not in header:
            raise DataError(path, header_line, f'missing column "{column}" (columns found: {_quoted(header)})')
    for line, fields in rows:
        if len(fields) != len(header):
            # A field running over lines here is usually a stray quote that csv read up to the next one.
            hint = " (is a quote opened on this line never closed?)" if any("\n" in f for f in fields) else ""
            reason = f"expected {len(header)} fields as in the header, found {len(fields)}{hint}"
            raise DataError(path, line, reason)
        yield line, dict(zip(header, fields, strict=True))


def _raw_examples(path: str | Path, records: Iterable[tuple[int, dict[str, Any]]], text_column: str,
                  pair_column: str | None, label_column: str, *, regression: bool) -> list[_Raw]:
    raws = []
    for line, record in records:
        text = _text(path, line, record, text_column)
        pair = _text(path, line, record, pair_column) if pair_column else None
        value = _field(path, line, record, label_column)
        label = _regression_label(path, line, value, label_column) if regression else \
            _class_label(path, line, value, label_column)
        raws.append(_Raw(line, text, pair, label))
    if not raws:
        raise DataError(path, 0, "no examples (only a header row)")
    return raws


def _regression_examples(raws: list[_Raw]) -> list[Example]:
    return [Example(raw.text, raw.text_pair, raw.label) for raw in raws]


def _index_labels(path: str | Path, raws: list[_Raw], labels: list[str], known_as: str) -> list[Example]:
    index = {label: i for i, label in enumerate(labels)}
    examples = []
    for raw in raws:
        if raw.label not in index:
            raise DataError(path, raw.line, f"label {_show(raw.label)} is not one of {known_as}: {_quoted(labels)}")
        examples.append(Example(raw.text, raw.text_pair, index[str(raw.label)]))
    return examples


def _field(path: str | Path, line: int, record: dict[str, Any], column: str) -> Any:
    if column not in record:  # only JSONL gets here: a table's header was checked up front
        raise DataError(path, line, f'missing column "{column}" (columns found: {_quoted(record)})')
    return record[column]


def _text(path: str | Path, line: int, record: dict[str, Any], column: str) -> str:
    value = _field(path, line, record, column)
    if not isinstance(value, str):
        raise DataError(path, line, f'column "{column}" must be a string, got {_json_kind(value)}')
    if not value.strip():
        raise DataError(path, line, f'empty text in column "{column}"')
    return value


def _class_label(path: str | Path, line: int, value: Any, column: str) -> str:
    # JSONL labels may be booleans or numbers; 1 and 1.0 name the same class.
    if isinstance(value, bool):
        value = "true" if value else "false"
    elif isinstance(value, int):
        value = str(value)
    elif isinstance(value, float):
        value = str(int(value)) if value.is_integer() else str(value)
    if not isinstance(value, str):
        reason = f'label in column "{column}" must be a string or number, got {_json_kind(value)}'
        raise DataError(path, line, reason)
    if not value.strip():
        raise DataError(path, line, f'empty label in column "{column}"')
    return value.strip()


def _regression_label(path: str | Path, line: int, value: Any, column: str) -> float:
    try:
        is_number = isinstance(value, str | int | float) and not isinstance(value, bool)
        number = float(value) if is_number else math.nan
    except (ValueError, OverflowError):
        number = math.nan
    if not math.isfinite(number):
        raise DataError(path, line, f'regression label {_show(value)} in column "{column}" is not a finite number')
    return number


def _quoted(names: Iterable[str]) -> str:
    return ", ".join(f'"{name}"' for name in names)


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _json_kind(value: Any) -> str:
    kinds = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array",
             dict: "an object", type(None): "null"}
    return kinds.get(type(value), type(value).__name__)
