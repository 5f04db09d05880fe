"""The pruned-adapter archive: a .tar.gz of the engine's output directory, with its sha256 and size."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
from pathlib import Path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_archive(out_dir: Path, artifact_root: Path, job_id: str, attempt: int) -> dict:
    """Pack `out_dir` as `<job_id>/...` into `<artifact_root>/<job_id>-<attempt>.tar.gz` (one file per attempt, so
    a superseded worker never overwrites the archive of the attempt that owns the job; written aside, then
    renamed, so a half-written archive is never served). Returns the artifacts row's fields."""
    artifact_root.mkdir(parents=True, exist_ok=True)
    remove_attempt_files(artifact_root, job_id)  # what killed earlier attempts left
    name = f"{job_id}-{attempt}.tar.gz"
    partial = artifact_root / (name + ".partial")
    with tarfile.open(partial, "w:gz") as tar:
        tar.add(out_dir, arcname=job_id)
    os.replace(partial, artifact_root / name)
    return {"path": name, "sha256": sha256_file(artifact_root / name), "size_bytes": (artifact_root / name).stat().st_size}


def remove_attempt_files(artifact_root: Path, job_id: str) -> None:
    """Remove every archive, whole or partial, of the job's attempts that did not commit one: a worker killed
    while packing leaves `<job>-<attempt>.tar.gz.partial`, one killed after the rename but before its commit a
    whole archive no row points to. Call only as the job's current attempt, before it writes its own."""
    for path in artifact_root.glob(f"{job_id}-*.tar.gz*"):
        path.unlink(missing_ok=True)


def remove_job_files(artifact_root: Path, work_root: Path, job_id: str) -> None:
    """Everything on disk of a deleted job: its archives (whole or partial, every attempt's) and its work folder
    (checkpoints, engine output: an ended job's is normally gone already)."""
    remove_attempt_files(artifact_root, job_id)
    work = work_root / job_id
    if work.parent == work_root:  # an id is one path segment
        shutil.rmtree(work, ignore_errors=True)
