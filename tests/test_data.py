"""pruning.data: GLUE layouts against the real files, local CSV/TSV/JSONL, every input error, and the metrics."""

from __future__ import annotations

import math
import pickle
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pruning.data import DataError, Example, compute_metrics, load_task
from pruning.data.loaders import read_glue_file
from pruning.spec import SpecError, TaskSpec

GLUE_DIR = Path("/work/shared/data/glue")
needs_glue = pytest.mark.skipif(not GLUE_DIR.is_dir(), reason=f"GLUE data not at {GLUE_DIR}")


def write(folder: Path, name: str, content: str | bytes) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", newline="")
    return path


def local(train: Path, dev: Path, **kwargs) -> TaskSpec:
    return TaskSpec(train=str(train), dev=str(dev), **kwargs)


def label_counts(examples: list[Example]) -> dict[int | float, int]:
    return dict(Counter(example.label for example in examples))


def test_importing_the_package_does_not_load_torch():
    # The API service validates uploads with this package and has no torch installed.
    code = "import sys, pruning.data; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent).returncode == 0


# --- GLUE against the real files (row counts and label counts from SOURCES.md, or counted with cut | uniq) --


@needs_glue
@pytest.mark.parametrize("glue, train_counts, dev_counts, labels, metrics", [
    ("sst2", {0: 29780, 1: 37569}, {0: 428, 1: 444}, ["0", "1"], ("accuracy",)),
    ("mrpc", {0: 1194, 1: 2474}, {0: 129, 1: 279}, ["0", "1"], ("f1", "accuracy")),
    ("cola", {0: 2528, 1: 6023}, {0: 322, 1: 721}, ["0", "1"], ("mcc", "accuracy")),
    ("rte", {0: 1249, 1: 1241}, {0: 146, 1: 131}, ["entailment", "not_entailment"], ("accuracy",)),
])
def test_glue_classification_tasks(glue, train_counts, dev_counts, labels, metrics):
    data = load_task(TaskSpec(glue=glue, data_dir=str(GLUE_DIR)))
    assert (data.name, data.problem, data.labels, data.metric_names) == (f"glue:{glue}", "classification", labels,
                                                                         metrics)
    assert data.num_labels == 2 and data.primary_metric == metrics[0]
    assert label_counts(data.train) == train_counts
    assert label_counts(data.dev) == dev_counts


@needs_glue
def test_glue_mrpc_reads_pairs_with_bare_quotes_and_a_bom_header():
    data = load_task(TaskSpec(glue="mrpc", data_dir=str(GLUE_DIR)))
    assert data.train[0] == Example(
        'Amrozi accused his brother, whom he called "the witness", of deliberately distorting his evidence.',
        'Referring to him as only "the witness", Amrozi accused his brother of deliberately distorting his '
        'evidence.',
        1)
    # An unbalanced quote: csv's default quoting would swallow the following lines.
    assert data.dev[0].text_pair == '"The foodservice pie business does not fit our long-term growth strategy.'


@needs_glue
def test_glue_cola_has_no_header_and_no_final_newline():
    data = load_task(TaskSpec(glue="cola", data_dir=str(GLUE_DIR)))
    first = "Our friends won't buy this analysis, let alone the next one we propose."
    assert data.train[0] == Example(first, None, 1)
    assert data.dev[-1] == Example("John talked to Bill about himself.", None, 1)


@needs_glue
def test_glue_stsb_is_regression_on_the_score_column():
    data = load_task(TaskSpec(glue="stsb", data_dir=str(GLUE_DIR)))
    assert (data.problem, data.labels, data.num_labels, data.metric_names) == ("regression", None, 1,
                                                                              ("pearson", "spearman"))
    assert (len(data.train), len(data.dev)) == (5749, 1500)
    assert data.train[0] == Example("A plane is taking off.", "An air plane is taking off.", 5.0)
    scores = [example.label for example in data.train + data.dev]
    assert (min(scores), max(scores)) == (0.0, 5.0)


@needs_glue
def test_glue_qnli_dev_and_its_missing_train(tmp_path):
    dev = read_glue_file("qnli", GLUE_DIR / "QNLI" / "dev.tsv")
    assert label_counts(dev) == {0: 2702, 1: 2761}
    question = "What came into force after the new constitution was herald?"
    sentence = "As of that day, the new constitution heralding the Second Republic came into force."
    assert dev[0] == Example(question, sentence, 0)
    with pytest.raises(DataError) as err:
        load_task(TaskSpec(glue="qnli", data_dir=str(GLUE_DIR)))
    assert str(err.value) == f"{GLUE_DIR}/QNLI/train.tsv: file not found"
    # With a train file in place (dev standing in for it), load_task reads QNLI.
    shutil.copy(GLUE_DIR / "QNLI" / "dev.tsv", write(tmp_path, "QNLI/train.tsv", ""))
    shutil.copy(GLUE_DIR / "QNLI" / "dev.tsv", tmp_path / "QNLI" / "dev.tsv")
    data = load_task(TaskSpec(glue="qnli", data_dir=str(tmp_path)), seed=0)
    assert (len(data.train), len(data.dev), data.labels) == (5463, 5463, ["entailment", "not_entailment"])


def test_glue_finds_columns_by_header_name_and_rejects_unknown_labels(tmp_path):
    write(tmp_path, "RTE/train.tsv",
          "label\tsentence2\tsentence1\tindex\nentailment\tb\ta\t0\nnot_entailment\td\tc\t1\n")
    write(tmp_path, "RTE/dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\te\tf\tentailment\n1\tg\th\tneutral\n")
    with pytest.raises(DataError) as err:
        load_task(TaskSpec(glue="rte", data_dir=str(tmp_path)))
    assert str(err.value) == (f'{tmp_path}/RTE/dev.tsv:3: label "neutral" is not one of the RTE labels: '
                              '"entailment", "not_entailment"')
    assert read_glue_file("rte", tmp_path / "RTE/train.tsv") == [Example("a", "b", 0), Example("c", "d", 1)]


def test_glue_row_with_a_missing_field(tmp_path):
    path = write(tmp_path, "CoLA/dev.tsv", "gj04\t1\t\tFine.\ngj04\t0\t*\n")
    with pytest.raises(DataError) as err:
        read_glue_file("cola", path)
    assert str(err.value) == f"{path}:2: expected 4 fields as in the header, found 3"


# --- Local files --------------------------------------------------------------------------------------------


def test_local_csv_with_a_text_pair_quotes_bom_and_blank_lines(tmp_path):
    train = write(tmp_path, "pairs.csv", '\ufeffid,premise,hypothesis,gold\n'
                                         '1,"A man, tall.","He is ""tall"".",yes\n'
                                         '\n'
                                         '2,"Two\nlines",One line,no\n')
    dev = write(tmp_path, "dev.csv", "id,premise,hypothesis,gold\n3,x,y,no\n")
    data = load_task(local(train, dev, text_column="premise", text_pair_column="hypothesis", label_column="gold"))
    assert (data.name, data.problem, data.labels, data.metric_names) == ("pairs.csv", "classification",
                                                                         ["no", "yes"], ("accuracy", "f1"))
    assert data.train == [Example("A man, tall.", 'He is "tall".', 1), Example("Two\nlines", "One line", 0)]
    assert data.dev == [Example("x", "y", 0)]


def test_local_tsv_is_read_with_csv_quoting(tmp_path):
    # pandas' to_csv(sep="\t") quotes fields holding a tab, a quote or a newline.
    train = write(tmp_path, "train.tsv", 'text\tpair\tlabel\n"a\tb"\tc\t1\n"say ""hi"""\td\t0\n')
    data = load_task(local(train, train, text_pair_column="pair"))
    assert data.train == [Example("a\tb", "c", 1), Example('say "hi"', "d", 0)]


def test_local_jsonl_with_number_and_boolean_labels(tmp_path):
    train = write(tmp_path, "train.jsonl", '{"q": "a", "s": "b", "label": 2}\n\n{"q": "c", "s": "d", "label": 10}\n'
                                           '{"q": "e", "s": "f", "label": 1.0}\n')
    dev = write(tmp_path, "dev.jsonl", '{"q": "g", "s": "h", "label": "10"}\n')
    data = load_task(local(train, dev, text_column="q", text_pair_column="s"))
    assert data.labels == ["1", "2", "10"]  # numeric labels sort by value
    assert data.metric_names == ("accuracy",)
    assert data.train == [Example("a", "b", 1), Example("c", "d", 2), Example("e", "f", 0)]
    assert data.dev == [Example("g", "h", 2)]
    booleans = write(tmp_path, "bool.jsonl", '{"text": "a", "label": true}\n{"text": "b", "label": false}\n')
    assert load_task(local(booleans, booleans)).labels == ["false", "true"]


def test_local_text_labels_sort_as_text(tmp_path):
    train = write(tmp_path, "train.csv", "text,label\na,pos\nb,10\nc,neg\n")
    assert load_task(local(train, train)).labels == ["10", "neg", "pos"]


def test_local_regression_and_format_override(tmp_path):
    train = write(tmp_path, "scores.txt", "text,label\na,0.5\nb, 3 \nc,-1e-2\n")
    data = load_task(local(train, train, format="csv", problem="regression"))
    assert (data.problem, data.labels, data.num_labels, data.metric_names) == ("regression", None, 1,
                                                                              ("pearson", "spearman"))
    assert [example.label for example in data.train] == [0.5, 3.0, -0.01]


def test_subsampling_is_seeded_keeps_file_order_and_spares_dev(tmp_path):
    rows = "".join(f"text {i},{i % 2}\n" for i in range(100))
    train = write(tmp_path, "train.csv", "text,label\n" + rows)
    spec = local(train, train, max_train_examples=10)
    first, again, other = load_task(spec, seed=0), load_task(spec, seed=0), load_task(spec, seed=1)
    positions = [int(example.text.split()[1]) for example in first.train]
    assert len(positions) == 10 and positions == sorted(positions)
    assert first.train == again.train
    assert first.train != other.train
    assert len(first.dev) == 100
    assert len(load_task(local(train, train, max_train_examples=1000)).train) == 100


# --- Errors: each names the file, the line and the reason ---------------------------------------------------


def error_of(spec: TaskSpec) -> str:
    with pytest.raises(DataError) as err:
        load_task(spec)
    return str(err.value)


def test_data_error_fields_and_pickling():
    err = DataError(Path("a/b.csv"), 3, "empty text")
    assert (str(err), err.path, err.line, err.reason) == ("a/b.csv:3: empty text", "a/b.csv", 3, "empty text")
    copy = pickle.loads(pickle.dumps(err))
    assert (str(copy), copy.path, copy.line, copy.reason) == (str(err), err.path, err.line, err.reason)


def test_error_missing_file(tmp_path):
    dev = write(tmp_path, "dev.csv", "text,label\na,0\n")
    assert error_of(local(tmp_path / "nope.csv", dev)) == f"{tmp_path}/nope.csv: file not found"


@pytest.mark.parametrize("content", ["", "\n \n", "\ufeff"])
def test_error_empty_file(tmp_path, content):
    train = write(tmp_path, "train.csv", content)
    assert error_of(local(train, train)) == f"{train}: empty file"


def test_error_header_only(tmp_path):
    train = write(tmp_path, "train.csv", "text,label\n")
    assert error_of(local(train, train)) == f"{train}: no examples (only a header row)"


def test_error_missing_column_lists_the_columns_found(tmp_path):
    train = write(tmp_path, "train.csv", "\ntext,target\na,0\n")
    assert error_of(local(train, train)) == f'{train}:2: missing column "label" (columns found: "text", "target")'


def test_error_missing_key_in_a_jsonl_line(tmp_path):
    train = write(tmp_path, "train.jsonl", '{"text": "a", "label": 0}\n{"text": "b", "y": 1}\n')
    assert error_of(local(train, train)) == f'{train}:2: missing column "label" (columns found: "text", "y")'


def test_error_wrong_number_of_fields_after_a_multiline_record(tmp_path):
    train = write(tmp_path, "train.csv", 'text,label\n"one\ntwo",0\nb,1,extra\n')
    assert error_of(local(train, train)) == f"{train}:4: expected 2 fields as in the header, found 3"


def test_error_unclosed_quote_gets_a_hint(tmp_path):
    train = write(tmp_path, "train.csv", 'text,label\n"oops,0\nb,1\n')
    assert error_of(local(train, train)) == (f"{train}:2: expected 2 fields as in the header, found 1 "
                                             "(is a quote opened on this line never closed?)")


def test_error_empty_text(tmp_path):
    train = write(tmp_path, "train.tsv", "text\tlabel\na\t0\n  \t1\n")
    assert error_of(local(train, train)) == f'{train}:3: empty text in column "text"'


def test_error_jsonl_text_not_a_string(tmp_path):
    train = write(tmp_path, "train.jsonl", '{"text": 5, "label": 0}\n')
    assert error_of(local(train, train)) == f'{train}:1: column "text" must be a string, got a number'


@pytest.mark.parametrize("value, shown", [('"high"', '"high"'), ('"nan"', '"nan"'), ("true", "true"),
                                          ("null", "null")])
def test_error_regression_label_not_a_finite_number(tmp_path, value, shown):
    train = write(tmp_path, "train.jsonl", f'{{"text": "a", "label": 1.5}}\n{{"text": "b", "label": {value}}}\n')
    assert error_of(local(train, train, problem="regression")) == (
        f'{train}:2: regression label {shown} in column "label" is not a finite number')


def test_error_invalid_json(tmp_path):
    train = write(tmp_path, "train.jsonl", '{"text": "a", "label": 0}\n{"text": "b", "label": 1\n')
    assert error_of(local(train, train)) == f"{train}:2: invalid JSON: Expecting ',' delimiter at column 25"


def test_error_jsonl_line_not_an_object(tmp_path):
    train = write(tmp_path, "train.jsonl", '{"text": "a", "label": 0}\n\n["b", 1]\n')
    assert error_of(local(train, train)) == f"{train}:3: expected a JSON object, got an array"


def test_error_not_utf8(tmp_path):
    train = write(tmp_path, "train.csv", b"text,label\na,0\n" + "café,1\n".encode("latin-1"))
    assert error_of(local(train, train)) == f"{train}:3: not UTF-8 text (byte 0xe9); save the file as UTF-8"


def test_error_fewer_than_two_classes(tmp_path):
    train = write(tmp_path, "train.csv", "text,label\na,pos\nb,pos\n")
    assert error_of(local(train, train)) == (f'{train}: classification needs at least 2 classes in train, '
                                             'found only "pos"')


def test_error_dev_label_not_in_train(tmp_path):
    train = write(tmp_path, "train.csv", "text,label\na,neg\nb,pos\n")
    dev = write(tmp_path, "dev.csv", "text,label\nc,pos\nd,meh\n")
    assert error_of(local(train, dev)) == f'{dev}:3: label "meh" is not one of the train labels: "neg", "pos"'


def test_error_json_extension_suggests_jsonl(tmp_path):
    train = write(tmp_path, "train.json", '[{"text": "a", "label": 0}]')
    assert error_of(local(train, train)) == (f"{train}: JSON files are not supported: write one JSON object "
                                             "per line and name the file .jsonl")


def test_error_unknown_extension(tmp_path):
    train = write(tmp_path, "train.txt", "text,label\na,0\n")
    assert error_of(local(train, train)) == (f'{train}: cannot tell the format from the extension ".txt": '
                                             "use .csv, .tsv or .jsonl, or set the task's format")


def test_an_invalid_spec_is_a_spec_error():
    with pytest.raises(SpecError, match="give either glue"):
        load_task(TaskSpec(train="train.csv"))


# --- Metrics: hand-computed values --------------------------------------------------------------------------


def test_accuracy_f1_mcc_binary():
    # TP = 2 (items 0, 3), TN = 1 (item 1), FP = 1 (item 2), FN = 1 (item 4).
    predictions, labels = np.array([1, 0, 1, 1, 0]), np.array([1, 0, 0, 1, 1])
    scores = compute_metrics(["accuracy", "f1", "mcc"], predictions, labels)
    assert list(scores) == ["accuracy", "f1", "mcc"]
    assert scores["accuracy"] == pytest.approx(3 / 5)
    assert scores["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert scores["mcc"] == pytest.approx((2 * 1 - 1 * 1) / math.sqrt(3 * 3 * 2 * 2))


def test_mcc_multiclass_and_extremes():
    # Gorodkin: (c*s - sum p_k t_k) / sqrt((s^2 - sum p_k^2)(s^2 - sum t_k^2)) = (3*4 - 5) / sqrt(10 * 10).
    assert compute_metrics(["mcc"], np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2]))["mcc"] == pytest.approx(0.7)
    assert compute_metrics(["mcc"], np.array([0, 1, 1]), np.array([0, 1, 1]))["mcc"] == pytest.approx(1.0)
    assert compute_metrics(["mcc"], np.array([1, 0, 0]), np.array([0, 1, 1]))["mcc"] == pytest.approx(-1.0)


def test_pearson_and_spearman_with_ties():
    # Pearson: dx = [-1.5, -.5, .5, 1.5], dy = [-3, -1, 0, 4]: 11 / sqrt(5 * 26).
    pearson = compute_metrics(["pearson"], np.array([1.0, 2, 3, 4]), np.array([2.0, 4, 5, 9]))["pearson"]
    assert pearson == pytest.approx(11 / math.sqrt(130))
    # Spearman: ranks [1, 2.5, 2.5, 4] and [1, 3, 2, 4]: 4.5 / sqrt(4.5 * 5) = sqrt(0.9). Pearson on the raw
    # values differs: dx = [-10, 0, 0, 10], dy = [-3.5, 2.5, -2.5, 3.5]: 70 / sqrt(200 * 37).
    scores = compute_metrics(["spearman", "pearson"], np.array([10.0, 20, 20, 30]), np.array([1.0, 7, 2, 8]))
    assert scores["spearman"] == pytest.approx(math.sqrt(0.9))
    assert scores["pearson"] == pytest.approx(70 / math.sqrt(200 * 37))


def test_degenerate_metrics_are_zero_not_nan():
    labels = np.array([0, 1, 1, 0])
    constant = np.zeros(4, dtype=int)
    assert compute_metrics(["mcc", "f1", "accuracy"], constant, labels) == {"mcc": 0.0, "f1": 0.0, "accuracy": 0.5}
    # All-positive predictions: MCC is undefined (0.0), F1 keeps its usual value 2TP / (2TP + FP + FN) = 4 / 6.
    assert compute_metrics(["mcc", "f1"], np.ones(4, dtype=int), labels) == {"mcc": 0.0, "f1": pytest.approx(4 / 6)}
    assert compute_metrics(["mcc", "f1"], constant, constant) == {"mcc": 0.0, "f1": 0.0}
    flat = np.full(3, 0.1)  # x - mean(x) is not exactly 0 here
    rising = np.array([1.0, 2, 3])
    assert compute_metrics(["pearson", "spearman"], flat, rising) == {"pearson": 0.0, "spearman": 0.0}
    assert compute_metrics(["pearson", "spearman"], rising, flat) == {"pearson": 0.0, "spearman": 0.0}


def test_metric_input_errors():
    with pytest.raises(ValueError, match="unknown metric 'auc'"):
        compute_metrics(["auc"], np.array([1]), np.array([1]))
    with pytest.raises(ValueError, match="2 predictions for 3 labels"):
        compute_metrics(["accuracy"], np.array([1, 0]), np.array([1, 0, 1]))
    with pytest.raises(ValueError, match="no predictions"):
        compute_metrics(["accuracy"], np.array([]), np.array([]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_agree_with_scikit_learn_and_scipy(seed):
    """Our numpy metrics (the engine has no scikit-learn or scipy at run time) against the libraries' own."""
    import numpy as np
    from scipy import stats
    from sklearn import metrics

    rng = np.random.default_rng(seed)
    labels, predictions = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    ours = compute_metrics(["accuracy", "f1", "mcc"], predictions, labels)
    assert ours["accuracy"] == pytest.approx(metrics.accuracy_score(labels, predictions))
    assert ours["f1"] == pytest.approx(metrics.f1_score(labels, predictions))
    assert ours["mcc"] == pytest.approx(metrics.matthews_corrcoef(labels, predictions))
    three, guesses = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    assert compute_metrics(["mcc"], guesses, three)["mcc"] == pytest.approx(metrics.matthews_corrcoef(three, guesses))
    x = rng.normal(size=100)
    y = np.round(x + rng.normal(size=100), 1)  # rounded: ties, which Spearman must average
    values = compute_metrics(["pearson", "spearman"], x, y)
    assert values["pearson"] == pytest.approx(stats.pearsonr(x, y).statistic)
    assert values["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic)
