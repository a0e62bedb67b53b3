"""The segments folder as a long-lived process sees it: what the list shows of every valid
config, re-read only for the files whose size or modification time changed since the last look.

The API server lists every segment on each request of the page; parsing 10,000 YAML files
each time would cost seconds, a `stat` of each costs milliseconds. It keeps `SegmentSummary`
tuples of strings, not the configs: 10,000 pydantic models are some 300,000 objects the
garbage collector would scan again and again (the list's p95 doubled with them). Invalid files
are left out, as the DAG file leaves them out (the config-check DAG and `cli validate` report
them).
"""

from __future__ import annotations

import gc
import os
import threading
from pathlib import Path
from typing import NamedTuple

from include.config.segments import (
    SUFFIXES,
    SegmentConfig,
    SegmentConfigError,
    load_segment,
    segments_dir,
)

_Key = tuple[int, int]  # (mtime_ns, size)


class SegmentSummary(NamedTuple):
    """What the Connector Segments list reads of a segment's YAML."""

    id: str
    name: str
    description: str
    schedule: str | None
    source_type: str
    dag_id: str

    @classmethod
    def of(cls, config: SegmentConfig) -> SegmentSummary:
        return cls(
            config.id,
            config.name,
            config.description,
            config.schedule,
            config.source.type,
            config.dag_id,
        )


class SegmentCatalog:
    def __init__(self) -> None:
        self._cache: dict[str, tuple[_Key, SegmentSummary | None]] = {}
        self._lock = threading.Lock()
        self._loaded = False  # a file was (re)read since the last freeze

    def segments(self, directory: Path | None = None) -> list[SegmentSummary]:
        """The valid segments of `directory` (default: the configured segments folder)."""
        directory = directory or segments_dir()
        found: dict[str, list[tuple[str, _Key]]] = {}
        with os.scandir(directory) as entries:  # paths as strings: 10,000 Paths cost ~80 ms
            for entry in entries:
                stem, suffix = os.path.splitext(entry.name)
                if suffix in SUFFIXES and entry.is_file():
                    st = entry.stat()
                    found.setdefault(stem, []).append((entry.path, (st.st_mtime_ns, st.st_size)))
        configs = []
        with self._lock:
            seen = set()
            for files in found.values():
                seen.update(path for path, _ in files)
                if len(files) == 1:  # x.yaml beside x.yml: neither is used (see load_segments)
                    config = self._config(*files[0])
                    if config is not None:
                        configs.append(config)
            for gone in self._cache.keys() - seen:
                del self._cache[gone]
            if self._loaded:
                # What is alive now (Airflow's modules, these summaries) lives as long as the
                # API server: out of the collector's full scans, which otherwise ran every few
                # list requests over a million objects (docs/decisions.md, "JSON API").
                gc.freeze()
                self._loaded = False
        return configs

    def _config(self, path: str, key: _Key) -> SegmentSummary | None:
        cached = self._cache.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            summary: SegmentSummary | None = SegmentSummary.of(load_segment(Path(path)))
        except SegmentConfigError:
            summary = None
        self._cache[path] = (key, summary)
        self._loaded = True
        return summary
