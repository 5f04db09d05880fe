"""`peftsearch merge RESULT DEST`: a LoRA-only result as a plain transformers model folder (the LoRA folded into
the weights), which loads with transformers alone and serves at the base model's speed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("result", type=Path, help="a result directory (peftsearch search --out, or a download)")
    parser.add_argument("dest", type=Path, help="the folder to write the merged model to")
    parser.add_argument("--base-model", help="the base model, by name or path (default: the one the result names)")


def run(args: argparse.Namespace) -> int:
    from pruning.export import merge

    try:
        dest = merge(args.result, args.dest, args.base_model)
    except (OSError, ValueError) as err:
        print(f"peftsearch merge: {err}", file=sys.stderr)
        return 2
    print(f"wrote {dest}: load it with transformers' AutoModelFor... .from_pretrained({str(dest)!r})")
    return 0
