"""A connector's progress inside its run folder, so that a retried task resumes.

`state.json` is replaced atomically; page files are written under a temporary name and renamed,
so whatever a killed worker left behind is either complete or absent.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa


class Checkpoint:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self._state = folder / "state.json"

    def load(self) -> dict[str, Any]:
        return json.loads(self._state.read_text()) if self._state.exists() else {}

    def save(self, **state: Any) -> None:
        partial = self._state.with_suffix(".partial")
        partial.write_text(json.dumps(state))
        partial.replace(self._state)

    def reset(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True, exist_ok=True)

    def write_page(self, number: int, batch: pa.RecordBatch) -> None:
        import pyarrow.parquet as pq

        path = self.folder / f"page-{number:07d}.parquet"
        partial = path.with_suffix(".partial")
        pq.write_table(_table(batch), partial)
        partial.replace(path)

    def pages(self) -> Iterator[pa.RecordBatch]:
        import pyarrow.parquet as pq

        for path in sorted(self.folder.glob("page-*.parquet")):
            yield from pq.read_table(path).to_batches()


def _table(batch: pa.RecordBatch):
    import pyarrow as pa

    return pa.Table.from_batches([batch])
