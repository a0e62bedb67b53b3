"""Staging: a run's extracted audience as Parquet row groups, written batch by batch.

Layout: `<staging root>/<segment id>/<run key>/audience.parquet`. The root is a local folder
(`CONNECTOR_SEGMENTS_STAGING_DIR`, default `.local/staging` in the repo); every task of one run
reads and writes under the same run folder, and a retried task overwrites its own files.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

STAGING_DIR_ENV = "CONNECTOR_SEGMENTS_STAGING_DIR"
_DEFAULT_ROOT = Path(__file__).resolve().parent.parent / ".local" / "staging"
AUDIENCE_FILE = "audience.parquet"


@dataclass(frozen=True)
class StagedAudience:
    path: str
    rows: int  # rows kept (they have a user key)
    refused_no_user_key: int  # rows dropped because the user key was empty


def staging_root() -> Path:
    return Path(os.environ.get(STAGING_DIR_ENV) or _DEFAULT_ROOT)


def _run_path(segment_id: str, run_id: str) -> Path:
    """The run id (Airflow's) made safe for a path."""
    return staging_root() / segment_id / re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id)


def keep_private() -> None:
    """From here on this process creates files and folders for its own user only. Staged
    files hold personal data and are written by several libraries (pyarrow, DuckDB, the
    connectors' checkpoints), each with the process umask; a task runs in a process of its
    own, so each step that writes staged files calls this first."""
    os.umask(0o077)


def run_dir(segment_id: str, run_id: str) -> Path:
    """The run's folder, created if needed, readable by the service user only."""
    keep_private()
    path = _run_path(segment_id, run_id)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    for folder in (path.parent, path):  # made earlier under another umask, perhaps
        folder.chmod(0o700)
    return path


def remove_run(segment_id: str, run_id: str) -> None:
    """Drop a run's staged files (they hold personal data) once the run is over."""
    shutil.rmtree(_run_path(segment_id, run_id), ignore_errors=True)


def remove_other_runs(segment_id: str, run_id: str) -> None:
    """Drop what earlier runs of the segment left (a killed worker cleans up nothing)."""
    keep = _run_path(segment_id, run_id)
    folder = keep.parent
    for path in folder.iterdir() if folder.is_dir() else ():
        if path != keep:
            shutil.rmtree(path, ignore_errors=True)


def stage_audience(
    batches: Iterable[pa.RecordBatch], fields: list[str], user_key: str, destination: Path
) -> StagedAudience:
    """Write batches to Parquet, dropping (and counting) rows without a user key.

    Written to a temporary name and renamed at the end, so a half-written file never looks
    complete to a later task.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    schema = pa.schema([(name, pa.string()) for name in fields])
    partial = destination.with_suffix(".partial")
    kept = refused = 0
    try:
        with pq.ParquetWriter(partial, schema, compression="zstd") as writer:
            for batch in batches:
                key = pc.utf8_trim_whitespace(batch.column(user_key))
                has_key = pc.fill_null(pc.not_equal(key, ""), False)
                keep = batch.filter(has_key)
                refused += batch.num_rows - keep.num_rows
                kept += keep.num_rows
                if keep.num_rows:
                    writer.write_batch(keep)
    except BaseException:
        partial.unlink(missing_ok=True)  # personal data, and never mistaken for complete
        raise
    partial.replace(destination)
    return StagedAudience(path=str(destination), rows=kept, refused_no_user_key=refused)
