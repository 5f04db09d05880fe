"""`peftsearch datasets upload|list|get|delete`: train + dev files on a server, through peftsearch.Client."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pruning.spec import PROBLEMS

    from .console import connection_options

    common = [connection_options()]
    actions = parser.add_subparsers(dest="action", required=True, metavar="action")

    upload = actions.add_parser("upload", parents=common,
                                help="upload a train and a dev file (CSV, TSV or JSONL); prints the dataset id")
    upload.add_argument("train")
    upload.add_argument("dev", help="the examples the search is scored on, same format")
    upload.add_argument("--text-column", default="text", help="the column holding the text (default text)")
    upload.add_argument("--text-pair-column", help="the second text of sentence-pair tasks")
    upload.add_argument("--label-column", default="label", help="the column holding the label (default label)")
    upload.add_argument("--problem", choices=PROBLEMS, default="classification",
                        help="completion: JSONL prompt/completion or chat rows, for a decoder model")
    upload.add_argument("--prompt-template", help="for a decoder model: classify by generating the label after "
                        "this prompt ({text}, {text_pair})")
    upload.add_argument("--label-words", help="with --prompt-template: the word written for each label instead "
                        "of its name, e.g. 0=negative,1=positive")
    upload.add_argument("--format", choices=("csv", "tsv", "jsonl"), help="default: from the file names")
    upload.add_argument("--name")

    listing = actions.add_parser("list", parents=common, help="your datasets, newest first")
    listing.add_argument("--limit", type=int, default=20, help="how many (default 20; 0: all)")
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")

    get = actions.add_parser("get", parents=common, help="one dataset as JSON")
    get.add_argument("dataset_id")

    delete = actions.add_parser("delete", parents=common,
                                help="delete a dataset and its files (not while a job that has not ended uses it)")
    delete.add_argument("dataset_id")


def run(args: argparse.Namespace) -> int:
    from .console import run_command

    return run_command(args, {"upload": upload, "list": list_datasets, "get": get, "delete": delete})


def upload(client, args: argparse.Namespace) -> int:
    from .console import err, out

    dataset = client.upload_dataset(args.train, args.dev, text_column=args.text_column,
                                    text_pair_column=args.text_pair_column, label_column=args.label_column,
                                    problem=args.problem, format=args.format, name=args.name,
                                    prompt_template=args.prompt_template, label_words=args.label_words)
    out.print(dataset.id, highlight=False)
    labels = f", labels {', '.join(dataset.labels)}" if dataset.labels else ""
    err.print(f"{dataset.name}: {dataset.train_rows} train / {dataset.dev_rows} dev rows{labels}, metric "
              f"{dataset.metric_name}", highlight=False)
    return 0


def list_datasets(client, args: argparse.Namespace) -> int:
    from rich import box
    from rich.table import Table

    from .console import age, id_column, out, print_json

    datasets = client.datasets(limit=args.limit or None)
    if args.json:
        print_json([dataset.model_dump(mode="json") for dataset in datasets])
        return 0
    table = Table(id_column("dataset", [d.id for d in datasets]), "name", "format", "text", "label", "labels",
                  "train", "dev", "created", box=box.SIMPLE_HEAD)
    for d in datasets:
        text = d.columns.text_column + (f" + {d.columns.text_pair_column}" if d.columns.text_pair_column else "")
        table.add_row(d.id, d.name, d.format, text, d.columns.label_column,
                      ", ".join(d.labels) if d.labels else d.columns.problem, str(d.train_rows), str(d.dev_rows),
                      age(d.created_at))
    out.print(table)
    return 0


def get(client, args: argparse.Namespace) -> int:
    from .console import print_json

    print_json(client.dataset(args.dataset_id).model_dump(mode="json"))
    return 0


def delete(client, args: argparse.Namespace) -> int:
    from .console import out

    client.delete_dataset(args.dataset_id)
    out.print(f"{args.dataset_id} deleted", highlight=False)
    return 0
