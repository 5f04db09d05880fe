"""`peftsearch <command>`: each command lives in its own module and is imported only when it runs, so that
`peftsearch keys create` never loads torch and `peftsearch search` never loads the web stack."""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module, help). Each module has `add_arguments(parser)` and `run(args) -> int`.
COMMANDS = {
    "search": ("pruning.cli", "run a search on this machine and write the result directory"),
    "merge": ("peftsearch.merge_cmd", "write a LoRA-only result as a plain transformers model (LoRA merged)"),
    "serve": ("peftsearch.serve", "run the REST API (embedded SQLite + in-process worker unless configured)"),
    "worker": ("peftsearch.worker_cmd", "run a Celery worker for the configured broker"),
    "keys": ("peftsearch.keys", "manage API keys"),
    "jobs": ("peftsearch.jobs_cmd", "search jobs on a server: submit, list, get, watch, cancel, download, delete"),
    "datasets": ("peftsearch.datasets_cmd", "datasets on a server: upload, list, get, delete"),
    "webhooks": ("peftsearch.webhooks_cmd", "where a server POSTs your jobs' ends: create, list, get, delete, "
                                            "deliveries"),
    "demo": ("peftsearch.demo", "start the embedded service, run a real search through the API, stop"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="peftsearch", description=(
        "Find a parameter-efficient fine-tuning configuration by pruning: run a search here, or serve the API and "
        "use a server's jobs and datasets."))
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    for name, (module, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:  # only the command that runs is imported
            importlib.import_module(module).add_arguments(command)
    _remember_parsers(parser)
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # argparse would blame the top-level parser and print its usage, not the subcommand's
        args.parser_.error(f"unrecognized arguments: {' '.join(unknown)}")
    del args.parser_
    return importlib.import_module(COMMANDS[args.command][0]).run(args)


def _remember_parsers(parser: argparse.ArgumentParser) -> None:
    """Each (sub)command's parser records itself as `parser_`; the innermost one that parses has the last word."""
    parser.set_defaults(parser_=parser)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _remember_parsers(child)


if __name__ == "__main__":
    raise SystemExit(main())
