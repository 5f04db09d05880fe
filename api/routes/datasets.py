"""/v1/datasets: upload a train+dev pair (CSV, TSV or JSONL), checked before it is kept; list yours, get one,
delete one. (The upload size limit is api/middleware.py's UploadLimit: it counts the bytes before FastAPI reads
the form.)"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, Response, UploadFile

from pruning.spec import PROBLEMS
from store.datasets import (
    DatasetError,
    create_dataset,
    delete_dataset,
    get_dataset,
    list_datasets,
    remove_dataset_files,
)

from ..deps import Config, CurrentCaller
from ..errors import ApiError, documented
from ..schemas import DatasetOut, Page

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=documented(400, 401, 413, 422, 503))
Missing = documented(404)


@router.post("", status_code=201, response_model=DatasetOut, summary="Upload a dataset (train + dev files)")
def upload_dataset(
    caller: CurrentCaller,
    settings: Config,
    train: Annotated[UploadFile, File(description="Training examples: .csv, .tsv or .jsonl.")],
    dev: Annotated[UploadFile, File(description="Dev examples (the search is scored on them), same format.")],
    name: Annotated[str | None, Form(max_length=200)] = None,
    format: Annotated[Literal["csv", "tsv", "jsonl"] | None, Form(description="Default: from the file name.")] = None,
    text_column: Annotated[str, Form()] = "text",
    text_pair_column: Annotated[str | None, Form(description="Second text of sentence-pair tasks.")] = None,
    label_column: Annotated[str, Form()] = "label",
    problem: Annotated[Literal[PROBLEMS], Form(description=(  # type: ignore[valid-type]
        "What the label is; completion: JSONL rows {prompt, completion} or chat rows {messages} that a decoder "
        "learns to complete (the column fields are then unused)."))] = "classification",
    prompt_template: Annotated[str | None, Form(max_length=10_000, description=(
        "Classification on a decoder model by generating the label: each row becomes this prompt ({text}, "
        "{text_pair}) answered by its label's name. Empty: a classification head."))] = None,
    label_words: Annotated[str | None, Form(max_length=10_000, description=(
        "With prompt_template: the word written for each label instead of its name, e.g. "
        "0=negative,1=positive."))] = None,
) -> DatasetOut:
    columns = {"text_column": text_column, "text_pair_column": text_pair_column or None,
               "label_column": label_column, "problem": problem, "prompt_template": prompt_template or None,
               "label_words": label_words or None}
    for param, value in {"name": name, **columns}.items():
        if value is not None and "\x00" in value:
            raise DatasetError(param, "must not contain NUL characters")
    with caller.session() as session:  # the files are checked before the first query takes a connection
        dataset = create_dataset(session, settings.datasets, owner=caller.owner, name=name, fmt=format,
                                 columns=columns, files={"train": (train.filename or "train", train.file),
                                                         "dev": (dev.filename or "dev", dev.file)},
                                 max_bytes=settings.max_upload_bytes)
        session.commit()
    return DatasetOut.of(dataset)


@router.get("", response_model=Page[DatasetOut], summary="List your datasets, newest first")
def get_datasets(caller: CurrentCaller, after: str | None = None,
                 limit: Annotated[int, Query(ge=1, le=100)] = 20) -> Page[DatasetOut]:
    with caller.session() as session:
        rows = list_datasets(session, caller.owner, after=after, limit=limit + 1)
    return Page[DatasetOut].of(rows, limit, DatasetOut.of)


@router.get("/{dataset_id}", response_model=DatasetOut, responses=Missing, summary="One of your datasets")
def get_one(dataset_id: str, caller: CurrentCaller) -> DatasetOut:
    with caller.session() as session:
        dataset = get_dataset(session, caller.owner, dataset_id)
    if dataset is None:
        raise ApiError(404, f"no dataset {dataset_id!r}", param="dataset_id")
    return DatasetOut.of(dataset)


@router.delete("/{dataset_id}", status_code=204, response_class=Response, responses=documented(404, 409),
               summary="Delete a dataset and its files (not while a job that has not ended uses it)")
def delete_one(dataset_id: str, caller: CurrentCaller, settings: Config) -> Response:
    with caller.session() as session:
        if not delete_dataset(session, caller.owner, dataset_id):
            raise ApiError(404, f"no dataset {dataset_id!r}", param="dataset_id")
        session.commit()
    remove_dataset_files(settings.datasets, dataset_id)
    return Response(status_code=204)
