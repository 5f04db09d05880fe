"""Uploaded datasets: a train and a dev file plus the column mapping, checked by the engine's own loader before
anything is kept. A rejected upload leaves no file and no row behind."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import BinaryIO, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from pruning.data import DataError, load_task
from pruning.spec import SpecError, TaskSpec

from .models import FINAL, Dataset, Job, new_id

FORMATS = ("csv", "tsv", "jsonl")


class DatasetError(ValueError):
    def __init__(self, param: str | None, message: str, status: int = 422):
        super().__init__(message)
        self.param, self.message, self.status = param, message, status


def task_spec(dataset: Dataset, root: Path) -> TaskSpec:
    """The engine's view of a stored dataset (absolute file paths under the dataset directory)."""
    return TaskSpec(train=str(root / dataset.train_path), dev=str(root / dataset.dev_path), format=dataset.format,
                    **dataset.columns)


def create_dataset(session: Session, root: Path, *, owner: str, name: str | None, fmt: str | None,
                   files: dict[str, tuple[str, BinaryIO]], columns: dict, max_bytes: int) -> Dataset:
    """`files` maps "train" and "dev" to (uploaded file name, readable file). Raises DatasetError."""
    if fmt is None:
        fmt, dev_fmt = _format_of(files["train"][0]), _format_of(files["dev"][0])
        if fmt is None:
            raise DatasetError("format", f"cannot tell the format of {files['train'][0]!r}: name the files *.csv, "
                                         "*.tsv or *.jsonl, or set format")
        if dev_fmt is not None and dev_fmt != fmt:  # both would be read as train's: say so instead of a bad column
            raise DatasetError("dev", f"train is {fmt.upper()} but dev is {dev_fmt.upper()} "
                                      f"({files['dev'][0]!r}): upload both in one format")
    if fmt not in FORMATS:
        raise DatasetError("format", f"unknown format {fmt!r}: choose csv, tsv or jsonl")
    dataset_id = new_id("ds")
    folder = root / dataset_id
    folder.mkdir(parents=True)
    try:
        size = sum(_save(source, folder / f"{split}.{fmt}", split, max_bytes) for split, (_, source) in files.items())
        dataset = Dataset(id=dataset_id, owner=owner, name=name or _stored_name(files["train"][0]), format=fmt,
                          columns=columns,
                          train_path=f"{dataset_id}/train.{fmt}", dev_path=f"{dataset_id}/dev.{fmt}",
                          size_bytes=size, labels=None, metric_name="", train_rows=0, dev_rows=0)
        try:
            task = task_spec(dataset, root).validate()
            data = load_task(task)
        except SpecError as e:
            raise DatasetError(e.field.removeprefix("task."), e.message) from e
        except DataError as e:
            split = "train" if Path(e.path).name.startswith("train.") else "dev"
            raise DatasetError(split, DataError.naming(files[split][0], e.line, e.reason)) from e
        except (ValueError, RecursionError) as e:  # the JSON parser's own limits: huge integers, deep nesting
            raise DatasetError(None, "the train or dev file holds a record the JSON parser refuses: "
                                     f"{type(e).__name__}: {str(e)[:200]}") from e
        if any("\x00" in label for label in data.labels or []):
            raise DatasetError("train", "a label contains a NUL character")
        if not data.train or not data.dev:
            raise DatasetError("train" if not data.train else "dev", "the file holds no examples")
        if task.label_words is not None:  # as the engine parsed them ("0=negative,1=positive" -> a mapping)
            dataset.columns = {**columns, "label_words": task.label_words}
        dataset.labels, dataset.metric_name = data.labels, data.primary_metric
        dataset.train_rows, dataset.dev_rows = len(data.train), len(data.dev)
        session.add(dataset)
        session.flush()
        return dataset
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


class DatasetInUse(Exception):
    """Jobs that have not ended run on the dataset."""


def get_dataset(session: Session, owner: str, dataset_id: str,
                lock: Literal["share", "update"] | None = None) -> Dataset | None:
    """The owner's dataset; `lock` holds its row until the transaction ends (PostgreSQL; SQLite serialises
    writers anyway): "share" against a deletion, "update" to delete it."""
    query = select(Dataset).where(Dataset.id == dataset_id, Dataset.owner == owner)
    if lock is not None:
        query = query.with_for_update(read=lock == "share")
    return session.scalar(query)


def delete_dataset(session: Session, owner: str, dataset_id: str) -> bool:
    """Delete the owner's dataset row; False when there is none, DatasetInUse while a job that has not ended
    uses it (finished jobs keep its id). Its files (remove_dataset_files) can go once this commits: no job is
    created on it meanwhile (store.jobs.submit holds a share lock on the row it reads)."""
    dataset = get_dataset(session, owner, dataset_id, lock="update")
    if dataset is None:
        return False
    users = list(session.scalars(select(Job.id).where(Job.dataset_id == dataset_id, Job.status.not_in(FINAL))
                                 .order_by(Job.id).limit(6)))
    if users:
        named = ", ".join(users[:5]) + (", ..." if len(users) > 5 else "")
        raise DatasetInUse(f"dataset {dataset_id} is used by jobs that have not ended ({named}): cancel them or "
                           "wait until they end, then delete it")
    session.delete(dataset)
    session.flush()
    return True


def remove_dataset_files(root: Path, dataset_id: str) -> None:
    """The dataset's folder under the dataset directory (nothing when it is gone already)."""
    folder = root / dataset_id
    if folder.parent == root:  # an id is one path segment; never anything above or beside the folder
        shutil.rmtree(folder, ignore_errors=True)


def list_datasets(session: Session, owner: str, *, after: str | None, limit: int) -> list[Dataset]:
    query = select(Dataset).where(Dataset.owner == owner)
    if after:
        query = query.where(Dataset.id < after)
    return list(session.scalars(query.order_by(Dataset.id.desc()).limit(limit)))


def _stored_name(filename: str) -> str:
    """An uploaded file's name as a dataset name: what the column holds (200 characters, no NUL)."""
    return filename.replace("\x00", "")[:200] or "dataset"


def _format_of(filename: str) -> str | None:
    suffix = Path(filename).suffix.lower().lstrip(".")
    return suffix if suffix in FORMATS else None


def _save(source: BinaryIO, dest: Path, split: str, max_bytes: int) -> int:
    size = 0
    with open(dest, "wb") as out:
        for block in iter(lambda: source.read(1 << 20), b""):
            size += len(block)
            if size > max_bytes:
                raise DatasetError(split, f"the {split} file is larger than {max_bytes} bytes", status=413)
            out.write(block)
    return size
