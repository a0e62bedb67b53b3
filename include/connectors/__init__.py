"""Connectors: read a segment's source and yield Arrow record batches of source users.

One module per source type behind one entry (`read_source`). Connectors know nothing of Airflow
or of the whole segment config: they get their source settings, the segment's fields, and a
client (from `include.clients`, built from a plain `ConnectionInfo`) and checkpoint.
"""

from include.connectors.base import read_source
from include.connectors.errors import SourceError

__all__ = ["SourceError", "read_source"]
