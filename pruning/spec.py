"""What a search is asked to do: frozen dataclasses that round-trip through JSON.

A `SearchSpec` is the whole input of `pruning.search`. The service stores it as the job's spec (and derives its
request body from these classes); the CLI builds it from flags. Each field's type, bounds and description live in
its annotation; `pydantic.TypeAdapter` validates and dumps them, and the checks that span fields are the classes'
`cross_checks` validators. `SearchSpec.from_dict(spec.to_dict()) == spec` always holds, and `from_dict` rejects
unknown keys and bad values with a `SpecError` that names the field.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import string
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
    model_validator,
)

GLUE_TASKS = ("sst2", "mrpc", "cola", "stsb", "rte", "qnli")
PROBLEMS = ("classification", "regression", "completion")
ROLES = ("q", "k", "v", "o", "ffn_in", "ffn_out")  # projections of a layer, as architecture maps name them
ADAPTER_ACTIVATIONS = ("relu", "gelu", "silu", "tanh")
ASSIGNMENT_PRESETS = ("default", "prunepeft", "warmup", "random")
RETRAIN_MODES = ("fresh", "warm", "continue")
UNLEARNED_CHOICES = ("prior", "prune")  # what a search does when its supernet never learned the task
# A search round trains this share of train.steps unless schedule.steps_per_round says otherwise, so the search's
# share of a run's cost does not depend on the run's length (bench/results/fidelity.md: how its choices move
# with the rounds' length).
ROUND_SHARE = 0.05
# Below this many validation examples the split decides nothing (no learning gate, no calibration of the
# module types): one or two examples would decide them by chance.
MIN_VALIDATION = 16
MIN_ROUND_STEPS = 5
# An evaluation batch's tokens on a CPU unless train.eval_batch_tokens says otherwise: within noise of the fastest
# of 32 rows and 512-2048 tokens on every GLUE split measured (bench/results/batching.md).
CPU_EVAL_BATCH_TOKENS = 1024
# Speed mode's guard gives each stage this many rounds' steps of recovery before scoring it: after one round's,
# stages that recover given three failed the guard on SST-2 and STS-B (bench/results/variants.jsonl,
# guard1024-recover45), so the guard stopped at 0-19% of the layers' parameters instead of 37.7% at equal quality.
STAGE_ROUNDS = 3

# JSON's numbers as the engine takes them: no booleans or numeric strings for integers, no NaN or infinity.
Int = Annotated[int, Strict()]
Real = Annotated[float, Strict(), Field(allow_inf_nan=False)]
Share = Annotated[Real, Field(ge=0, lt=1)]  # a fraction in [0, 1)
# Each class: unknown keys are errors; a dataclass built in Python is checked again by validate().
SPEC_CONFIG = ConfigDict(extra="forbid", revalidate_instances="always")


class SpecError(ValueError):
    """A search spec field is missing or invalid. `field` is the dotted path, e.g. 'train.steps'."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _distinct_types(types: tuple[str, ...]) -> tuple[str, ...]:
    from .modules import MODULE_TYPES  # the registry, as it stands when the spec is checked

    if not types or set(types) - set(MODULE_TYPES) or len(set(types)) != len(types):
        raise ValueError(f"choose one or more of {', '.join(MODULE_TYPES)}, each once")
    return types


def _increasing(cuts: tuple[float, ...]) -> tuple[float, ...]:
    if list(cuts) != sorted(set(cuts)):
        raise ValueError("increasing fractions of depth strictly between 0 and 1")
    return cuts


def _known_assignment(name: str) -> str:
    from .criteria import CRITERIA  # no torch: the registry imports without it

    if name not in ASSIGNMENT_PRESETS and name not in CRITERIA:
        raise ValueError(f"{name!r} is not one of {', '.join(ASSIGNMENT_PRESETS)} or a criterion "
                         f"({', '.join(sorted(CRITERIA))})")
    return name


def _budget(value: Any) -> Any:
    try:
        parse_budget(value)
    except SpecError as e:
        raise ValueError(e.message) from None
    return value


def _label_words(value: Any) -> Any:
    """'0=negative,1=positive' -> {'0': 'negative', '1': 'positive'}; a mapping is checked as given."""
    if isinstance(value, str):
        pairs = [item.partition("=") for item in value.split(",") if item.strip()]
        if not pairs or any(not sep for _, sep, _ in pairs):
            raise ValueError("write label=word pairs separated by commas, e.g. 0=negative,1=positive")
        value = {label.strip(): word.strip() for label, _, word in pairs}
    if isinstance(value, dict):
        if not value:
            raise ValueError("give at least one label=word pair")
        if any(not isinstance(w, str) or not w.strip() or "\x00" in w for w in value.values()):
            raise ValueError("every label needs a non-empty word")
        words = [w.strip() for w in value.values()]
        if len(set(words)) != len(words):
            raise ValueError(f"two labels share a word: {words}; exact match could not tell them apart")
        value = {str(label): word.strip() for label, word in value.items()}
    return value


@dataclass(frozen=True)
class TaskSpec:
    """A task: where its train/dev data live and how to read them.

    `glue` names a GLUE task (its file layout, labels and metrics are known; `data_dir` holds `<TASK>/train.tsv`).
    Otherwise `train`/`dev` are local CSV, TSV or JSONL files and the columns say which fields to read.
    """

    __pydantic_config__ = SPEC_CONFIG

    glue: Annotated[Literal[GLUE_TASKS] | None, Field(  # type: ignore[valid-type]
        description="A GLUE task, read from data_dir; null: the train and dev files.")] = None
    data_dir: Annotated[str | None, Field(description="The folder holding SST-2/, MRPC/, ... (GLUE tasks).")] = None
    train: Annotated[str | None, Field(description="Training examples: a CSV, TSV or JSONL file.")] = None
    dev: Annotated[str | None, Field(description="Dev examples, scored once at the end.")] = None
    format: Annotated[Literal["csv", "tsv", "jsonl"] | None, Field(
        description="The files' format; null: from the file extension.")] = None
    text_column: Annotated[str, Field(description="The column holding the text.")] = "text"
    text_pair_column: Annotated[str | None, Field(
        description="The second text of sentence-pair tasks.")] = None
    label_column: Annotated[str, Field(description="The column holding the label.")] = "label"
    problem: Annotated[Literal[PROBLEMS], Field(  # type: ignore[valid-type]
        description="Classes, a real-valued target, or 'completion': a decoder language model learns to complete "
                    "prompts, from JSONL rows {'prompt', 'completion'} or chat rows {'messages': [{'role', "
                    "'content'}, ...]} whose last message is the assistant's answer (the columns are not "
                    "used).")] = "classification"
    max_train_examples: Annotated[Int | None, Field(ge=1, description=(
        "Subsample train (seeded) to this many examples, to keep CPU time sane; null: all."))] = None
    prompt_template: Annotated[str | None, Field(min_length=1, max_length=10_000, description=(
        "Classification by a decoder language model as generation: each example becomes the prompt this template "
        "makes ({text}, and {text_pair} for sentence pairs, filled in) answered by its label's name (after a "
        "space unless the prompt ends with whitespace), learned as a completion and scored by the exact match of "
        "the greedy answer. Only with problem 'classification'; null: a classification head."))] = None

    label_words: Annotated[dict[str, str] | None, BeforeValidator(_label_words), Field(description=(
        "With prompt_template: the answer written for each label instead of its name, e.g. {'0': 'negative', "
        "'1': 'positive'} (or the text '0=negative,1=positive'), so a decoder answers in words it already "
        "knows. Every label needs one, and the words must differ; null: the labels' names."))] = None

    @property
    def learned_as(self) -> str:
        """What the model learns: the problem, or a completion for classification by label generation."""
        return "completion" if self.prompt_template is not None else self.problem

    @model_validator(mode="after")
    def cross_checks(self) -> TaskSpec:
        if self.problem == "completion" and self.glue is not None:
            raise SpecError("problem", "a GLUE task is classification or regression; completion reads train "
                                       "and dev JSONL files")
        if self.problem == "completion" and self.format not in (None, "jsonl"):
            raise SpecError("format", "completion data is JSONL (prompt/completion or chat rows)")
        if self.prompt_template is not None:
            if self.problem != "classification":
                raise SpecError("prompt_template", f"labels are generated for classification, not {self.problem}")
            try:
                fields = {name for _, name, _, _ in string.Formatter().parse(self.prompt_template) if name is not None}
            except ValueError as err:
                raise SpecError("prompt_template", f"not a valid template: {err} (write a literal brace as {{{{ "
                                                   "or }}}})") from err
            if "text" not in fields or fields - {"text", "text_pair"}:
                raise SpecError("prompt_template", "use {text} (and {text_pair} for sentence pairs), no other "
                                                   f"fields; got {sorted(fields) or 'none'}")
        if self.label_words is not None and self.prompt_template is None:
            raise SpecError("label_words", "label words are the answers of label generation: give prompt_template "
                                           "too")
        if self.glue is not None:
            if not self.data_dir:
                raise SpecError("data_dir", "a GLUE task needs data_dir (the folder holding SST-2/, MRPC/, ...)")
        elif not (self.train and self.dev):
            raise SpecError("", "give either glue (+ data_dir) or both train and dev file paths")
        return self

    def validate(self, at: str = "task") -> TaskSpec:
        """The task checked, with its fields as the engine reads them (label words given as text parsed)."""
        return _validated(TaskSpec, self, at)

    @property
    def name(self) -> str:
        return f"glue:{self.glue}" if self.glue else f"file:{self.train}"


@dataclass(frozen=True)
class LoraSpec:
    __pydantic_config__ = SPEC_CONFIG

    rank: Annotated[Int, Field(ge=1, description="LoRA rank r of every adapted projection.")] = 8
    alpha: Annotated[Real, Field(gt=0, description="LoRA scaling alpha (the update is scaled by alpha / r).")] = 16.0
    dropout: Annotated[Share, Field(description="Dropout on the LoRA branch's input.")] = 0.1
    # Every linear role by default: at equal parameters, rank spread over more projections (the FFN included)
    # beats rank concentrated on q, v (LoRA paper Table 5; peft's MetaMathQA comparison), and the rank grain lets
    # the search land anywhere between "r=8 on q, v" and "r=2 everywhere".
    targets: Annotated[tuple[Literal[ROLES], ...], Field(  # type: ignore[valid-type]
        min_length=1, description="Roles of the architecture map to adapt: q, k, v, o, ffn_in, ffn_out.")] = ROLES
    rank_step: Annotated[Int, Field(ge=0, description=(
        "Rank granularity of the search: each adapted projection's rank shrinks this many components at a "
        "time (its least important ones by first-order Taylor importance, Light-PEFT's rank score), down to 0, "
        "competing with whole units for the budget. 0: a layer's LoRA is kept or removed whole."))] = 2


@dataclass(frozen=True)
class AdapterSpec:
    __pydantic_config__ = SPEC_CONFIG

    size: Annotated[Int, Field(ge=1, description="Bottleneck width.")] = 16
    activation: Annotated[Literal[ADAPTER_ACTIVATIONS], Field(  # type: ignore[valid-type]
        description="Non-linearity between the down and up projections.")] = "relu"


@dataclass(frozen=True)
class PrefixSpec:
    __pydantic_config__ = SPEC_CONFIG

    length: Annotated[Int, Field(ge=1, description="Learned key/value vectors per layer.")] = 8
    # Measured on SST-2/MiniLM: at 1e-3 a prefix-only model stays at chance after 300 steps, at 3e-2 it learns.
    lr_scale: Annotated[Real, Field(gt=0, description=(
        "Prefixes learn far slower than LoRA at the same step size (P-tuning v2 trains them at ~1e-2): their "
        "learning rate is the run's times this."))] = 30.0


@dataclass(frozen=True)
class SpaceSpec:
    """The supernet: which module types sit in every layer, and their sizes."""

    __pydantic_config__ = SPEC_CONFIG

    types: Annotated[tuple[str, ...], AfterValidator(_distinct_types), Field(
        description="The module types in every layer: one or more of lora, adapter, prefix, each once."),
    ] = ("lora", "adapter", "prefix")
    lora: Annotated[LoraSpec, Field(description="The LoRA units.")] = field(default_factory=LoraSpec)
    adapter: Annotated[AdapterSpec, Field(description="The bottleneck adapters.")] = field(
        default_factory=AdapterSpec)
    prefix: Annotated[PrefixSpec, Field(description="The prefixes.")] = field(default_factory=PrefixSpec)


@dataclass(frozen=True)
class TrainSpec:
    """The retraining of the chosen configuration (and the step budget of the search's learning phase)."""

    __pydantic_config__ = SPEC_CONFIG

    steps: Annotated[Int, Field(ge=1, description=(
        "Optimizer steps of the final retraining (with retrain 'continue': of the final configuration in all, "
        "the search's training included)."))] = 300
    batch_size: Annotated[Int, Field(ge=1, description="Training batch size.")] = 32
    lr: Annotated[Real, Field(gt=0, description="Peak learning rate (AdamW, linear warm-up and decay).")] = 1e-3
    warmup_ratio: Annotated[Share, Field(description=(
        "Share of the retraining's steps spent warming the learning rate up (none with retrain 'continue': its "
        "units are trained already)."))] = 0.06
    weight_decay: Annotated[Real, Field(ge=0, description="AdamW weight decay.")] = 0.0
    max_length: Annotated[Int, Field(ge=1, description="Tokens per example; longer ones are truncated.")] = 128
    batch_by_length: Annotated[bool, Strict(), Field(description=(
        "The retraining's batches hold rows of similar lengths, as the search's do (schedule.batch_by_length): "
        "a step pads little and costs less where lengths vary, but each batch is drawn from one band of lengths, "
        "not from the whole task (SST-2: the retraining 2.7x faster, 0.46 points lower; docs/engine.md)."
        ))] = False
    eval_batch_size: Annotated[Int, Field(ge=1, description="Batch size of evaluation: rows, at most.")] = 128
    eval_batch_tokens: Annotated[Int | None, Field(ge=1, description=(
        "An evaluation batch also holds at most this many tokens, padding included (rows x its longest row): "
        "short examples go many to a batch, long ones few, so little is padded. Null: "
        f"{CPU_EVAL_BATCH_TOKENS} on a CPU, where batches of about a thousand tokens evaluate fastest "
        "(bench/results/batching.md), and no cap on an accelerator, where large batches cost little more."))] = None
    gradient_checkpointing: Annotated[bool, Strict(), Field(description=(
        "Recompute each layer's activations in the backward pass instead of keeping them (the search's and the "
        "retraining's): less memory for long sequences or large batches, at about a third more time per step."
        ))] = False
    load_in_4bit: Annotated[bool, Strict(), Field(description=(
        "QLoRA: the frozen projections of the transformer layers held as 4-bit NormalFloat (bitsandbytes; "
        "`pip install 'peftsearch[qlora]'`), about a quarter of their memory; the units, head and embeddings "
        "stay in full precision. Not with backbone pruning, which slices those weights."))] = False

    def eval_tokens(self, device_type: str) -> int | None:
        """The evaluation batches' token cap on a device of this type ('cpu', 'cuda', ...)."""
        if self.eval_batch_tokens is not None:
            return self.eval_batch_tokens
        return CPU_EVAL_BATCH_TOKENS if device_type == "cpu" else None


@dataclass(frozen=True)
class PolicySpec:
    """The hybrid policy: which criterion scores which partition, and how rounds remove units."""

    __pydantic_config__ = SPEC_CONFIG

    assignment: Annotated[str, AfterValidator(_known_assignment), Field(description=(
        "'default' (the shipped table), 'prunepeft', 'warmup' (derive the table on a small subset first), "
        "'random', or a criterion name to use everywhere (a single-criterion ablation), e.g. 'taylor'."))] = "default"
    warmup_examples: Annotated[Int, Field(ge=2, description="Examples of the warm-up that derives the table.")] = 128
    warmup_steps: Annotated[Int, Field(ge=1, description="Training steps of that warm-up.")] = 20
    block_cuts: Annotated[tuple[Annotated[Real, Field(gt=0, lt=1)], ...], AfterValidator(_increasing), Field(
        description="Where the depth blocks of the assignment table begin: increasing fractions of depth "
                    "strictly between 0 and 1.")] = (0.2, 0.5, 0.8)
    accumulate: Annotated[Literal["mean", "ema"], Field(
        description="How a round's per-step scores are accumulated: their mean, or a bias-corrected EMA.")] = "mean"
    ema_beta: Annotated[Real, Field(gt=0, lt=1, description="The EMA's decay (accumulate = ema).")] = 0.9
    calibration_units: Annotated[Int, Field(ge=0, description=(
        "Criteria rank units within a module type; what one type is worth against another is measured: the "
        "validation-loss increase when a unit is switched off, averaged over up to this many units per type "
        "(spread over depth). 0: no measurement, every type weighs the same."))] = 4  # types' worths differed
    # 5-20x on SST-2 (bench/results/fidelity.jsonl, round 1): four units a type tell them apart at half the cost
    calibration_examples: Annotated[Int | None, Field(ge=MIN_VALIDATION, description=(
        "The calibration's ablations measure on this many examples of the validation split (the same ones for "
        "every unit and for the reference, so the differences are paired); null: the whole split. On a short "
        "run the calibration is a large share of a round's cost."))] = None

    @model_validator(mode="after")
    def cross_checks(self):
        if self.assignment in ("default", "prunepeft") and len(self.block_cuts) != 3:
            raise SpecError("block_cuts", f"the {self.assignment} assignment is a table for 4 depth blocks: give "
                                          "3 cuts, or another assignment")
        return self


@dataclass(frozen=True)
class ScheduleSpec:
    """The search rounds: how many, how long each trains, and the validation split that scores them."""

    __pydantic_config__ = SPEC_CONFIG

    rounds: Annotated[Int, Field(ge=1, description="Search rounds: train, score, remove.")] = 4
    steps_per_round: Annotated[Int | None, Field(ge=1, description=(
        f"Training steps of each round; null: {ROUND_SHARE:g} x train.steps (at least {MIN_ROUND_STEPS}), "
        "so the search's share of the run's cost does not depend on the run's length."))] = None
    lr: Annotated[Real, Field(gt=0, description="Learning rate of the search's training.")] = 1e-3
    dropout: Annotated[bool, Strict(), Field(description=(
        "Dropout (the backbone's and LoRA's) while the search trains the supernet. Off by default: the search "
        "trains to rank units, not to generalise, so dropout's random masks only add noise to the scores, and "
        "drawing them is a large share of a CPU step (docs/engine.md). The retraining keeps it."))] = False
    batch_by_length: Annotated[bool, Strict(), Field(description=(
        "The search's training batches hold rows of similar lengths (a shuffle sorted by length in windows of 50 "
        "batches, the batches shuffled), so they pad little: a batch of random rows is padded to its longest, on "
        "SST-2 three times the tokens it holds. The retraining draws random rows."))] = True
    eval_examples: Annotated[Int, Field(ge=0, description=(
        "The validation split, carved from train (the dev set is scored once, at the end): it gates the start "
        "of scoring, calibrates the module types and gives each round's metric. 0: no split (no gate, no "
        "calibration)."))] = 256
    max_train_examples: Annotated[Int | None, Field(ge=1, description=(
        "The search trains on at most this many train examples; null: all."))] = 2000
    # Units are scored only once the supernet has learned: its validation loss must be below (1 - learn_margin)
    # x the loss of always predicting the train labels' prior (mean, for regression); the trace says when
    # scoring began and whether the supernet had learned by then.
    learn_max_share: Annotated[Share, Field(description=(
        "The learning phase (before scoring) trains at most this share of train.steps steps."))] = 0.2
    learn_margin: Annotated[Share, Field(description=(
        "Learned: the validation loss is below (1 - learn_margin) x the loss of predicting the train labels' "
        "prior."))] = 0.05
    learn_standard_errors: Annotated[Real, Field(ge=0, description=(
        "Learned also needs the validation loss below that threshold by this many standard errors of its "
        "distance from it (paired over the validation examples: each one's loss less (1 - learn_margin) x the "
        "constant prediction's): the split is a sample, and a loss within noise of the threshold passes or fails "
        "by chance, a chance the learning phase takes at every check. 0: the threshold alone."
        ))] = 1.0
    learn_check_every: Annotated[Int, Field(ge=1, description=(
        "The learning phase checks the validation loss every this many steps."))] = 10
    unlearned: Annotated[Literal[UNLEARNED_CHOICES], Field(description=(  # type: ignore[valid-type]
        "When the learning phase runs out with the supernet's validation loss still not below the threshold, "
        "its scores are noise, and pruning by noise does worse than not pruning (PrunePEFT Table 5). 'prior': "
        "keep the search's prior instead, LoRA on every projection of the space at ranks spread evenly to the "
        "budget (at equal parameters the most reliable choice: LoRA paper Table 5, peft's MetaMathQA "
        "comparison), trained for all of train.steps, and in speed mode leave the backbone unpruned (its masks "
        "learned on that same supernet); not with a space without LoRA or a budget below rank 1 everywhere. "
        "'prune': prune anyway."))] = "prior"


@dataclass(frozen=True)
class BackboneSpec:
    """Light-PEFT early pruning of the backbone (heads, FFN neurons) and LoRA ranks. Off by default."""

    __pydantic_config__ = SPEC_CONFIG

    enabled: Annotated[bool, Strict(), Field(description="Prune the backbone too.")] = False
    head_ratio: Annotated[Share, Field(description=(
        "Share of heads removed, ranked per layer (Light-PEFT's 1/3). With grouped-query attention, of key/value "
        "heads, each with the query heads sharing it."))] = 1 / 3
    neuron_ratio: Annotated[Share, Field(description=(
        "Share of FFN neurons removed, ranked globally (Light-PEFT: 1/3)."))] = 0.4
    target_params: Annotated[Int | None, Field(ge=0, description=(
        "Instead of the ratios: keep removing until the backbone has this many parameters."))] = None
    mask_penalty: Annotated[Real, Field(ge=0, description="L1 coefficient on the masks.")] = 1e-4
    mask_lr: Annotated[Real, Field(gt=0, description=(
        "The masks learn during a few short search rounds, not Light-PEFT's 800-step estimation run, so they "
        "get a learning rate of their own, high enough for Adam to separate them in that time."))] = 0.02
    mask_rounds: Annotated[Int, Field(ge=1, description=(
        "Masks learn during this many search rounds, then the backbone is pruned."))] = 1
    # bench/results/masks.md: the Taylor ranking's choice agrees >= 0.88 with its choice at 0.5 x train.steps from
    # 0.25 x train.steps on (SST-2, STS-B); at the 0.15 a learning phase and one round gave, 0.45-0.80
    mask_share: Annotated[Share, Field(description=(
        "The masks learn for at least this share of train.steps before the backbone is pruned: where the "
        "learning phase and the mask rounds are shorter, an estimation phase after the learning phase trains "
        "the rest."))] = 0.25
    # the same measurement: the masks' magnitude never settles on SST-2 (0.55-0.65 agreement chunk to chunk)
    score: Annotated[Literal["magnitude", "taylor"], Field(description=(
        "How heads and neurons are ranked: 'taylor', |m * dL/dm| accumulated over the steps the masks learned, "
        "or the 'magnitude' of the learned mask (Light-PEFT, after 800 steps there)."))] = "taylor"
    rank_ratio: Annotated[Share, Field(description=(
        "Share of LoRA ranks removed globally (0 keeps them all)."))] = 0.5
    max_drop: Annotated[Real | None, Field(ge=0, description=(
        "Quality guard: prune in `stages` steps toward the target, each scored on the validation split (carved "
        "from train; see guard_examples) after `stage_steps` steps of recovery training, and keep the last stage "
        "whose metric is at most this far below an unpruned twin's trained alike (points: x 100 of the primary "
        "metric; for a loss or perplexity, percent of it). null: no guard, one step to the target (Light-PEFT)."
        ))] = 1.0
    stages: Annotated[Int, Field(ge=1, le=20, description="The guard's stages toward the target.")] = 4
    stage_steps: Annotated[Int | None, Field(ge=0, le=100_000, description=(
        f"Recovery training steps before each of the guard's stages is scored; null: {STAGE_ROUNDS} search rounds' "
        "steps."
        ))] = None
    guard_examples: Annotated[Int | None, Field(ge=MIN_VALIDATION, description=(
        "The guard scores each stage and its twin on this many train examples: the validation split, then train "
        "examples the search never trained on (schedule.max_train_examples leaves them out), as many as there "
        "are; fewer: a seeded sample of the validation split. A stage's drop is a difference of two metrics on a "
        "sample, its standard error in the stage's record (drop_se): more examples, less noise in it, for a longer "
        "evaluation (two per stage). null: the validation split."))] = None
    distill: Annotated[Share, Field(description=(
        "Recovery by distillation: once heads or neurons are off, every training step's loss is (1 - distill) x "
        "the task's + distill x the distance of the outputs to the unpruned supernet's (the teacher: the masked "
        "supernet when the guard took its reference; KL divergence of the class probabilities at temperature 2, "
        "squared error for regression, per token for a completion), in the guard's recovery steps, the rounds "
        "after and the retraining. The teacher stays in memory: a second copy of the model. 0: no teacher."))] = 0.0
    save_backbone: Annotated[bool, Strict(), Field(description=(
        "Also write the pruned backbone's weights (deploy without the base model)."))] = False


@dataclass(frozen=True)
class SearchSpec:
    __pydantic_config__ = SPEC_CONFIG

    model: Annotated[str, Field(min_length=1, description=(
        "Local path or hub id of a sequence-classification backbone."))]
    task: Annotated[TaskSpec, Field(description="The task's data.")]
    budget: Annotated[str | int, BeforeValidator(_budget), Field(description=(
        "Trainable PEFT parameters: a count (70000, '70k') or a share of the backbone ('0.5%')."))] = "0.5%"
    space: Annotated[SpaceSpec, Field(description="The supernet's module types and sizes.")] = field(
        default_factory=SpaceSpec)
    policy: Annotated[PolicySpec, Field(description="Which criterion scores which units.")] = field(
        default_factory=PolicySpec)
    schedule: Annotated[ScheduleSpec, Field(description="The search rounds.")] = field(default_factory=ScheduleSpec)
    train: Annotated[TrainSpec, Field(description="The final retraining.")] = field(default_factory=TrainSpec)
    backbone: Annotated[BackboneSpec, Field(description="Light-PEFT backbone pruning (off by default).")] = field(
        default_factory=BackboneSpec)
    retrain: Annotated[Literal[RETRAIN_MODES], Field(description=(  # type: ignore[valid-type]
        "Retrain the chosen configuration for train.steps from the supernet's trained weights ('warm'), or from "
        "a fresh initialisation ('fresh'); or 'continue': go on from the supernet's weights for what is left of "
        "train.steps after the steps the search trained (learning and estimation phases, rounds, the guard's "
        "stages), so the final configuration trains train.steps steps in all, as a fixed PEFT method would."
        ))] = "warm"
    seed: Annotated[Int, Field(ge=0, description="Seeds data order, initialisation and subsampling.")] = 0
    device: Annotated[str, Field(min_length=1, description=(
        "'auto' (cuda when present), 'cpu', 'cuda', 'cuda:1', ..."))] = "auto"

    @model_validator(mode="after")
    def cross_checks(self):
        task = getattr(self, "task", None)  # the service's overrides of this class leave the task out
        if task is not None and task.problem == "completion" and self.train.max_length < 2:
            raise SpecError("train.max_length", "a completion needs at least 2 tokens: one of its prompt, one "
                                                "to learn")
        if self.backbone.enabled and self.train.load_in_4bit:
            raise SpecError("train.load_in_4bit", "backbone pruning slices the projections' weights, which 4-bit "
                                                  "storage packs: choose one of the two")
        if self.retrain == "continue" and self.search_steps_limit() >= self.train.steps:
            raise SpecError("retrain", f"'continue' counts the search's training (up to {self.search_steps_limit()} "
                                       f"steps) within train.steps ({self.train.steps}), which leaves none to "
                                       "retrain: give more train.steps, or fewer or shorter rounds")
        if self.backbone.enabled and self.backbone.mask_rounds > self.schedule.rounds:
            raise SpecError("backbone.mask_rounds", f"must be at most schedule.rounds ({self.schedule.rounds})")
        return self

    def learn_steps_limit(self) -> int:
        """The most steps the learning phase may take (none without a validation split to gate it)."""
        return math.ceil(self.schedule.learn_max_share * self.train.steps) if self.schedule.eval_examples else 0

    def planned_steps(self) -> int:
        """Every training step a search plans: warm-up, learning and speed mode's estimation (at most), rounds,
        speed mode's guarded stages (at most), retraining (with 'continue', what the search at most leaves of
        train.steps)."""
        return self.warmup_steps() + self.search_steps_limit() + self.retrain_steps(self.search_steps_limit())

    def warmup_steps(self) -> int:
        """Steps of the warm-up that derives the criteria (`assignment: warmup`; it trains a probe, not the
        supernet)."""
        return self.policy.warmup_steps if self.policy.assignment == "warmup" else 0

    def retrain_steps(self, searched: int) -> int:
        """Steps of the retraining after a search that trained the supernet `searched` steps."""
        return self.train.steps - searched if self.retrain == "continue" else self.train.steps

    def mask_steps(self, learned: int) -> int:
        """Steps of speed mode's estimation phase after a learning phase of `learned` steps: what the masks still
        need to have learned for backbone.mask_share x train.steps when the backbone is pruned (0 without it)."""
        speed = self.backbone
        if not speed.enabled:
            return 0
        return max(0, math.ceil(speed.mask_share * self.train.steps) - learned - speed.mask_rounds * self.round_steps())

    def search_steps_limit(self) -> int:
        """The most steps the search trains the supernet: its learning phase and speed mode's estimation phase
        (together, at most the longer of the two alone), rounds and speed mode's guarded stages."""
        return (max(self.learn_steps_limit(), self.mask_steps(0)) + self.schedule.rounds * self.round_steps()
                + self.backbone.stages * self.stage_steps())

    def round_steps(self) -> int:
        """Training steps of each search round."""
        return self.schedule.steps_per_round or max(MIN_ROUND_STEPS, math.ceil(ROUND_SHARE * self.train.steps))

    def stage_steps(self) -> int:
        """Recovery steps before each of speed mode's guarded stages is scored (0 without the guard)."""
        speed = self.backbone
        if not speed.enabled or speed.max_drop is None:
            return 0
        return STAGE_ROUNDS * self.round_steps() if speed.stage_steps is None else speed.stage_steps

    def validate(self) -> SearchSpec:
        """Check every field the engine would otherwise trip over later; raise SpecError naming the first bad one."""
        _validated(SearchSpec, self)
        return self

    def to_dict(self) -> dict[str, Any]:
        return _adapter(SearchSpec).dump_python(self, mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchSpec:
        return _validated(cls, data)


_BUDGET = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%|k|m)?\s*$", re.IGNORECASE)


def parse_budget(budget: str | int) -> tuple[str, float]:
    """'0.5%' -> ('fraction', 0.005); 70000 or '70k' -> ('count', 70000). Raises SpecError otherwise."""
    if isinstance(budget, bool):
        raise SpecError("budget", "must be a parameter count or a percentage like '0.5%'")
    if isinstance(budget, int):
        if budget < 1:
            raise SpecError("budget", "must be >= 1 parameter")
        return "count", float(budget)
    match = _BUDGET.match(str(budget))
    if not match:
        raise SpecError("budget", f"{budget!r} is not a parameter count (70000, 70k) or a share ('0.5%')")
    value, unit = float(match.group(1)), (match.group(2) or "").lower()
    if unit == "%":
        if not 0 < value <= 100:
            raise SpecError("budget", "a percentage must be in (0, 100]")
        return "fraction", value / 100
    value *= {"": 1, "k": 1e3, "m": 1e6}[unit]
    if value < 1:
        raise SpecError("budget", "must be >= 1 parameter")
    return "count", value


def budget_params(budget: str | int, backbone_params: int) -> int:
    kind, value = parse_budget(budget)
    return int(value * backbone_params) if kind == "fraction" else int(value)


# --- validation: pydantic does it; SpecError names the first bad field ------------------------------------------------


@functools.cache  # building an adapter compiles the class's validator: once per class
def _adapter(cls: type) -> TypeAdapter:
    return TypeAdapter(cls)


def _validated(cls: type, data: Any, at: str = "") -> Any:
    try:
        return _adapter(cls).validate_python(data)
    except ValidationError as e:
        field, message = describe_error(e.errors()[0], cls)
        raise SpecError(".".join(p for p in (at, field) if p) or "spec", message) from None


def _from_dict(cls: type, data: Any, at: str) -> Any:
    """One part of a spec (e.g. SpaceSpec) from its JSON; errors are named from `at` (export.py reads parts)."""
    return _validated(cls, data, at)


def describe_error(error: dict[str, Any], root: type) -> tuple[str, str]:
    """(dotted field, message) of one pydantic error met validating `root` (a spec class, or a model derived
    from one): item indexes are left out of the field, a cross-field check names its field below where it ran,
    and the messages speak JSON (objects, arrays)."""
    loc = [str(part) for part in error["loc"] if not isinstance(part, int)]
    kind, value, cause = error["type"], error.get("input"), (error.get("ctx") or {}).get("error")
    if isinstance(cause, SpecError):
        return ".".join(p for p in (*loc, cause.field) if p), cause.message
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        return ".".join(loc), f"unknown field (known: {', '.join(_fields(root, loc[:-1]))})"
    if kind == "missing":
        message = "required"
    elif kind in ("dataclass_type", "model_type", "model_attributes_type", "dict_type"):
        message = f"expected an object, got {type(value).__name__}"
    elif kind in ("tuple_type", "list_type"):
        message = f"must be an array, got {type(value).__name__}"
    elif kind == "value_error":
        message = str(cause)
    else:
        message = f"{_BOUNDS[kind](**error.get('ctx', {})) if kind in _BOUNDS else error['msg']}, got {value!r}"
    return ".".join(loc), message


def _at_least(ge: float) -> str:
    if isinstance(ge, int):  # only integer fields have integer bounds
        return "must be a positive integer" if ge == 1 else f"must be an integer >= {ge}"
    return f"must be >= {ge:g}"


# The engine's wording of pydantic's checks, which its CLI and the service's 422s have always shown.
_BOUNDS = {
    "greater_than_equal": _at_least,
    "greater_than": lambda gt: f"must be > {gt:g}",
    "less_than": lambda lt: f"must be < {lt:g}",
    "int_type": lambda: "must be an integer",
    "float_type": lambda: "must be a number",
    "finite_number": lambda: "must be a finite number",
}


def _fields(root: type, loc: list[str]) -> list[str]:
    """The field names of the object at `loc` below `root` (dataclasses and pydantic models alike)."""
    cls = root
    for name in loc:
        cls = _field_types(cls).get(name)
    return list(_field_types(cls)) if cls is not None else []


def _field_types(cls: Any) -> dict[str, Any]:
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        return {name: info.annotation for name, info in cls.model_fields.items()}
    if dataclasses.is_dataclass(cls):
        return typing.get_type_hints(cls)
    return {}
