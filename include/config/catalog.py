"""The segments folder as a long-lived process sees it: every valid config, re-read only for
the files whose size or modification time changed since the last look.

The API server lists every segment on each request of the page; parsing 10,000 YAML files
each time would cost seconds, a `stat` of each costs milliseconds. Invalid files are left out
here, as the DAG file leaves them out (the config-check DAG and `cli validate` report them).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from include.config.segments import (
    SUFFIXES,
    SegmentConfig,
    SegmentConfigError,
    load_segment,
    segments_dir,
)

_Key = tuple[int, int]  # (mtime_ns, size)


class SegmentCatalog:
    def __init__(self) -> None:
        self._cache: dict[str, tuple[_Key, SegmentConfig | None]] = {}
        self._lock = threading.Lock()

    def segments(self, directory: Path | None = None) -> list[SegmentConfig]:
        """The valid configs of `directory` (default: the configured segments folder)."""
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
        return configs

    def _config(self, path: str, key: _Key) -> SegmentConfig | None:
        cached = self._cache.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            config: SegmentConfig | None = load_segment(Path(path))
        except SegmentConfigError:
            config = None
        self._cache[path] = (key, config)
        return config
