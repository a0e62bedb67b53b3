"""Staging: where a run's files live between its steps, and the private folder each step works in.

A run's durable files are the extracted audience (`audience.parquet`, after extract), the
matched members (`members.parquet`, after match) and the connectors' checkpoints, under
`<root>/<segment id>/<run key>/`. The root (`CONNECTOR_SEGMENTS_STAGING_DIR`) is one of:

- a local folder (`LocalStaging`; default `.local/staging` in the repo): each step works in the
  run folder itself, so nothing is copied; folders 0700, files 0600.
- a prefix in object storage (`ObjectStaging`: an fsspec filesystem, S3, GCS or Azure, built by
  `include/orchestration/staging_store.py` from the variable's URL): each step works in a
  private scratch folder under the worker's TMPDIR (0700, removed when the step ends), downloads
  the files it reads and uploads those a later step needs. Workers then share nothing but the
  bucket, and a retried step may run on another host than the try before it.

Either way a file is staged only once complete: written locally under a temporary name and
renamed, and uploaded only then (an object becomes visible under its key when its upload has
finished; a multipart upload's parts never are). A run's staged files hold personal data:
they are removed when the run ends (`remove_run`), and `remove_other_runs` drops what earlier
runs of the segment left. Nothing here imports Airflow, and nothing is logged with credentials:
a store is named by its URL without the part before `@`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import pyarrow as pa
    from fsspec import AbstractFileSystem

log = logging.getLogger(__name__)

STAGING_DIR_ENV = "CONNECTOR_SEGMENTS_STAGING_DIR"
_DEFAULT_ROOT = Path(__file__).resolve().parent.parent / ".local" / "staging"
AUDIENCE_FILE = "audience.parquet"
SCRATCH_PREFIX = "connector-segments+"  # a step's scratch: <prefix><segment>+<run key>+<random>
_T = TypeVar("_T")


class StagingError(RuntimeError):
    """The staging store failed or lacks a file the step needs. The message names the store
    (its URL without credentials) and the step."""


@dataclass(frozen=True)
class StagedAudience:
    path: str  # where it is kept: a local path, or the object's URL (without credentials)
    rows: int  # rows kept (they have a user key)
    refused_no_user_key: int  # rows dropped because the user key was empty


def staging_root() -> Path:
    """The local staging folder, when `CONNECTOR_SEGMENTS_STAGING_DIR` is no URL (an
    object-store URL is `include.orchestration.staging_store.staging()`'s to open)."""
    value = os.environ.get(STAGING_DIR_ENV) or str(_DEFAULT_ROOT)
    if "://" in value:
        raise ValueError(f"{STAGING_DIR_ENV} is an object-store URL, not a local folder")
    return Path(value)


def run_key(run_id: str) -> str:
    """The run id (Airflow's) made safe for a path or an object key."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id)


def keep_private() -> None:
    """From here on this process creates files and folders for its own user only. Staged
    files hold personal data and are written by several libraries (pyarrow, DuckDB, the
    connectors' checkpoints), each with the process umask; a task runs in a process of its
    own, so each step that writes staged files calls this first."""
    os.umask(0o077)


def run_dir(segment_id: str, run_id: str, root: Path | None = None) -> Path:
    """The run's folder in the local staging folder `root` (`staging_root()` by default),
    created if needed, readable by the service user only."""
    keep_private()
    path = (root or staging_root()) / segment_id / run_key(run_id)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    for folder in (path.parent, path):  # made earlier under another umask, perhaps
        folder.chmod(0o700)
    return path


class StepFolder:
    """What one step of a run works in: `folder`, a private local folder. With a local staging
    folder it is the run folder itself, where everything is kept already; `ObjectStepFolder`
    is a scratch folder whose kept files live in the object store.

    It is also where a connector's checkpoint is kept (`connectors.checkpoint.KeptFiles`): here
    the checkpoint's files are in the run folder already, so `restore`, `keep` and `forget`
    have nothing to do."""

    is_run_folder = True  # `folder` is the run's own (it outlives the step)

    def __init__(self, folder: Path, staging: Staging, segment_id: str, run_id: str, step: str):
        self.folder = folder
        self.step = step
        self._staging = staging
        self._segment_id = segment_id
        self._run_id = run_id

    def fetch(self, name: str) -> Path:
        """A file an earlier step kept (`keep`), here: its local path."""
        return self.folder / name

    def keep(self, path: Path) -> str:
        """`path`, a complete file inside `folder`, kept for the run's later steps and
        retries; returns where it is kept (a local path or a URL without credentials)."""
        return str(path)

    def restore(self, folder: Path) -> None:
        """Bring back into `folder` (inside `folder`) the files kept of it."""

    def forget(self, folder: Path) -> None:
        """Drop the kept copies of `folder`'s files (the local folder is the caller's)."""

    def remove_run(self) -> bool:
        """The run is over: remove its staged files (best effort: `Staging.remove_run`)."""
        return self._staging.remove_run(self._segment_id, self._run_id, self.step)


class Staging(ABC):
    """Where runs stage their files: a local folder (`LocalStaging`) or object storage
    (`ObjectStaging`). Each method is told the step it serves, for its errors."""

    description: str  # the store in logs and errors (no credentials)

    @abstractmethod
    def step(self, segment_id: str, run_id: str, step: str) -> AbstractContextManager[StepFolder]:
        """The folder `step` of the run works in, for the length of the step."""

    @abstractmethod
    def remove_run(self, segment_id: str, run_id: str, step: str) -> bool:
        """Drop a run's staged files (they hold personal data) once the run is over. Best
        effort: a store that refuses is logged, not raised (the run's outcome is recorded by
        then, and the segment's next run removes them); returns whether they are gone."""

    @abstractmethod
    def remove_other_runs(self, segment_id: str, run_id: str, step: str) -> None:
        """Drop what earlier runs of the segment left (a killed worker cleans up nothing)."""


class LocalStaging(Staging):
    """A local folder shared by the steps of a run: `<root>/<segment id>/<run key>/`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.description = str(root)

    @contextlib.contextmanager
    def step(self, segment_id: str, run_id: str, step: str) -> Iterator[StepFolder]:
        yield StepFolder(run_dir(segment_id, run_id, self.root), self, segment_id, run_id, step)

    def remove_run(self, segment_id: str, run_id: str, step: str) -> bool:
        shutil.rmtree(self.root / segment_id / run_key(run_id), ignore_errors=True)
        return True

    def remove_other_runs(self, segment_id: str, run_id: str, step: str) -> None:
        keep = self.root / segment_id / run_key(run_id)
        folder = keep.parent
        for path in folder.iterdir() if folder.is_dir() else ():
            if path != keep:
                shutil.rmtree(path, ignore_errors=True)


class ObjectStaging(Staging):
    """Staging under a prefix of an object store: `fs` (fsspec) at `root` ("bucket/prefix").

    `url` is that prefix as a URL without credentials, for logs, errors and XComs;
    `description` names the store in errors (the URL by default); `upload_options` go with
    every upload (S3: `ServerSideEncryption`, `SSEKMSKeyId`)."""

    def __init__(
        self,
        fs: AbstractFileSystem,
        root: str,
        url: str,
        upload_options: dict[str, str] | None = None,
        description: str | None = None,
    ) -> None:
        self.fs = fs
        self.root_key = root.strip("/")
        self.url = url.rstrip("/")
        self.description = description or self.url
        self.upload_options = dict(upload_options or {})

    def key(self, segment_id: str, run_id: str | None = None, name: str = "") -> str:
        """The object key (fsspec path) of a segment's runs, a run, or a file of the run."""
        parts = [self.root_key, segment_id]
        if run_id is not None:
            parts.append(run_key(run_id))
        if name:
            parts.append(name)
        return "/".join(p for p in parts if p)

    def location(self, key: str) -> str:
        """`key` as a URL in logs and XComs (no credentials)."""
        return self.url + key.removeprefix(self.root_key)

    def call(self, step: str, what: str, action: Callable[[], _T]) -> _T:
        """`action()` against the store; any failure becomes a StagingError naming the store,
        the step and what was tried (the cause's own message kept: it holds no credentials)."""
        try:
            return action()
        except StagingError:
            raise
        except FileNotFoundError as exc:
            raise StagingError(
                f"staging store {self.description}, step {step}: {what}: not found ({exc})"
            ) from exc
        except Exception as exc:
            raise StagingError(
                f"staging store {self.description}, step {step}: {what} failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    @contextlib.contextmanager
    def step(self, segment_id: str, run_id: str, step: str) -> Iterator[StepFolder]:
        """A private scratch folder under the worker's TMPDIR for the length of the step."""
        keep_private()
        _remove_scratch(segment_id)  # what a killed step of this segment left on this host
        scratch = Path(
            tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{segment_id}+{run_key(run_id)}+")
        )  # 0700
        try:
            yield ObjectStepFolder(scratch, self, segment_id, run_id, step)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def remove_run(self, segment_id: str, run_id: str, step: str) -> bool:
        prefix = self.key(segment_id, run_id)
        try:
            self.call(step, f"removing {self.location(prefix)}", lambda: self._remove(prefix))
        except StagingError as exc:
            log.warning(
                "segment %s: the run's staged files were not removed: %s; the segment's next "
                "run removes them",
                segment_id,
                exc,
            )
            return False
        return True

    def remove_other_runs(self, segment_id: str, run_id: str, step: str) -> None:
        segment, keep = self.key(segment_id), self.key(segment_id, run_id)

        def remove() -> None:
            for entry in self._listing(segment):
                if entry.rstrip("/") != keep:
                    self._remove(entry)
            self._abort_uploads(segment, keep)

        self.call(step, f"removing earlier runs' files under {self.location(segment)}", remove)

    # -- the store's primitives (called through `call`) --

    def _listing(self, key: str) -> list[str]:
        self.fs.invalidate_cache(key)  # another process may have written since
        try:
            return self.fs.ls(key, detail=False)
        except FileNotFoundError:
            return []

    def _remove(self, key: str) -> None:
        """Everything under `key` (a run's or an earlier run's files)."""
        self.fs.invalidate_cache(key)
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(key, recursive=True)
        self._abort_uploads(key)
        self.fs.invalidate_cache(key)

    def _abort_uploads(self, key: str, keep: str | None = None) -> None:
        """S3: abort the unfinished multipart uploads under `key` (not under `keep`): a worker
        killed mid-upload leaves parts that hold personal data and that no listing shows."""
        call_s3 = getattr(self.fs, "call_s3", None)
        if call_s3 is None:
            return
        bucket, _, prefix = key.partition("/")
        listed = call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix + "/")
        for upload in listed.get("Uploads", []):
            if keep and f"{bucket}/{upload['Key']}".startswith(keep + "/"):
                continue
            call_s3(
                "abort_multipart_upload",
                Bucket=bucket,
                Key=upload["Key"],
                UploadId=upload["UploadId"],
            )


class ObjectStepFolder(StepFolder):
    """A step's scratch folder whose kept files live in the object store."""

    _staging: ObjectStaging
    is_run_folder = False

    def _key(self, path: Path) -> str:
        relative = path.relative_to(self.folder).as_posix()
        return self._staging.key(self._segment_id, self._run_id, relative)

    def fetch(self, name: str) -> Path:
        local = self.folder / name
        if not local.exists():  # not fetched yet in this step
            self._download(self._key(local), local)
        return local

    def keep(self, path: Path) -> str:
        key, store = self._key(path), self._staging
        # One upload to the final key, of a complete file: S3 shows an object only once its
        # (single or multipart) upload has finished, so no reader sees part of one.
        store.call(
            self.step,
            f"uploading {store.location(key)}",
            lambda: store.fs.put_file(str(path), key, **store.upload_options),
        )
        return store.location(key)

    def restore(self, folder: Path) -> None:
        store, prefix = self._staging, self._key(folder)
        for key in store.call(
            self.step, f"listing {store.location(prefix)}", lambda: _found(store.fs, prefix)
        ):
            self._download(key, folder / key.removeprefix(prefix + "/"))

    def forget(self, folder: Path) -> None:
        store, prefix = self._staging, self._key(folder)
        store.call(self.step, f"removing {store.location(prefix)}", lambda: store._remove(prefix))

    def _download(self, key: str, local: Path) -> None:
        """To a temporary name, renamed once complete."""
        store = self._staging
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_name(local.name + ".partial")
        try:
            store.call(
                self.step,
                f"downloading {store.location(key)}",
                lambda: store.fs.get_file(key, str(partial)),
            )
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        partial.replace(local)


def _found(fs: AbstractFileSystem, prefix: str) -> list[str]:
    """Every file under `prefix` (none when it does not exist)."""
    fs.invalidate_cache(prefix)
    try:
        return sorted(fs.find(prefix))
    except FileNotFoundError:
        return []


def _remove_scratch(segment_id: str) -> None:
    """Scratch folders of this segment left on this host by a killed step: a step of a segment
    runs one at a time (`max_active_runs=1`, steps in order), so no other one is in use."""
    mine = f"{SCRATCH_PREFIX}{segment_id}+"
    with contextlib.suppress(OSError), os.scandir(tempfile.gettempdir()) as entries:
        for entry in entries:
            if entry.name.startswith(mine) and entry.stat().st_uid == os.getuid():
                shutil.rmtree(entry.path, ignore_errors=True)


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
