"""The segment store: segments, runs and versioned members, in the `netmera_db` database."""

from include.store.repository import SegmentStore

__all__ = ["SegmentStore"]
