"""peftsearch's ML engine: find a PEFT configuration of a transformer by iterative hybrid pruning.

    from pruning import SearchSpec, TaskSpec, search, load
    result = search(SearchSpec(model="path/to/bert", task=TaskSpec(glue="sst2", data_dir="glue")), "out/")
    model = load("out/", "path/to/bert")

This package knows nothing of HTTP, SQL or Celery. Importing it is cheap: torch loads on first use of `search`,
`load` or `evaluate`, so the service can validate specs without torch.
"""

import logging

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

# bitsandbytes (the qlora extra), which peft imports whenever it is installed, logs at import that an optional CPU
# kernel could not be fetched from the Hub; its plain-torch path works, and the line would open every run's output.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

__all__ = [
    "AdapterSpec", "BackboneSpec", "Cancelled", "LoraSpec", "PolicySpec", "PrefixSpec", "ProgressEvent",
    "RemovedUnit", "RoundRecord", "ScheduleSpec", "SearchResult", "SearchSpec", "SpaceSpec", "SpecError",
    "TaskSpec", "TrainSpec", "search", "fit", "load", "evaluate", "merge", "fold_lora",
]


_LAZY = {"search": "pipeline", "fit": "pipeline", "load": "export", "evaluate": "export", "merge": "export",
         "fold_lora": "export"}


def __getattr__(name: str):
    # Lazy: these pull in torch and transformers.
    if name not in _LAZY:
        raise AttributeError(f"module 'pruning' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value
