"""peftsearch's ML engine: find a PEFT configuration of a transformer by iterative hybrid pruning.

    from pruning import SearchSpec, TaskSpec, search, load
    result = search(SearchSpec(model="path/to/bert", task=TaskSpec(glue="sst2", data_dir="glue")), "out/")
    model = load("out/", "path/to/bert")

This package knows nothing of HTTP, SQL or Celery. Importing it is cheap: torch loads on first use of `search`,
`load` or `evaluate`, so the service can validate specs without torch.
"""

from .result import Cancelled, ProgressEvent, RemovedUnit, RoundRecord, SearchResult
from .spec import (
    AdapterSpec,
    BackboneSpec,
    LoraSpec,
    PolicySpec,
    PrefixSpec,
    ScheduleSpec,
    SearchSpec,
    SpaceSpec,
    SpecError,
    TaskSpec,
    TrainSpec,
)

__all__ = [
    "AdapterSpec", "BackboneSpec", "Cancelled", "LoraSpec", "PolicySpec", "PrefixSpec", "ProgressEvent",
    "RemovedUnit", "RoundRecord", "ScheduleSpec", "SearchResult", "SearchSpec", "SpaceSpec", "SpecError",
    "TaskSpec", "TrainSpec", "search", "load", "evaluate",
]


def __getattr__(name: str):
    # Lazy: these pull in torch and transformers.
    if name == "search":
        from .search import search

        return search
    if name in ("load", "evaluate"):
        from . import export

        return getattr(export, name)
    raise AttributeError(f"module 'pruning' has no attribute {name!r}")
