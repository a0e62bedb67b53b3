"""A connector's progress inside its run folder, so that a retried task resumes.

`state.json` is replaced atomically; page files are written under a temporary name and renamed,
so whatever a killed worker left behind is either complete or absent.

When the run folder is only the step's scratch (staging in object storage), `kept` keeps a copy
of every finished file beyond the step: each file once complete, and `state.json` after the
files it speaks of, so a retry on any host starts from a state whose files are all there.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import pyarrow as pa


class KeptFiles(Protocol):
    """Where a checkpoint's files outlive the step's folder (`include.staging.StepFolder`)."""

    def restore(self, folder: Path) -> None:
        """Copy into `folder` the files kept of it."""

    def keep(self, path: Path) -> Any:
        """Keep a copy of `path`, a complete file."""

    def forget(self, folder: Path) -> None:
        """Drop the copies kept of `folder`'s files."""


class Checkpoint:
    def __init__(self, folder: Path, kept: KeptFiles | None = None) -> None:
        self.folder = folder
        self.kept = kept
        self.folder.mkdir(parents=True, exist_ok=True)
        self._state = folder / "state.json"
        if kept is not None:
            kept.restore(folder)

    def load(self) -> dict[str, Any]:
        return json.loads(self._state.read_text()) if self._state.exists() else {}

    def save(self, **state: Any) -> None:
        partial = self._state.with_suffix(".partial")
        partial.write_text(json.dumps(state))
        partial.replace(self._state)
        self.add(self._state)

    def reset(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.kept is not None:
            self.kept.forget(self.folder)

    def add(self, path: Path) -> None:
        """`path`, a finished file of the checkpoint (a page, a download), kept with it."""
        if self.kept is not None:
            self.kept.keep(path)

    def write_page(self, number: int, batch: pa.RecordBatch) -> None:
        import pyarrow.parquet as pq

        path = self.folder / f"page-{number:07d}.parquet"
        partial = path.with_suffix(".partial")
        pq.write_table(_table(batch), partial)
        partial.replace(path)
        self.add(path)

    def page_numbers(self) -> set[int]:
        return {int(path.stem.removeprefix("page-")) for path in self.folder.glob("page-*.parquet")}

    def pages(self) -> Iterator[pa.RecordBatch]:
        import pyarrow.parquet as pq

        for path in sorted(self.folder.glob("page-*.parquet")):
            yield from pq.read_table(path).to_batches()


def _table(batch: pa.RecordBatch):
    import pyarrow as pa

    return pa.Table.from_batches([batch])
