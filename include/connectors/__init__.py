"""Connectors: read a segment's source and yield Arrow record batches of source users.

One module per source type behind one small interface (`read_source`). Connectors know nothing
of Airflow: whatever they need from a Connection arrives as a plain `ConnectionInfo`.
"""

from include.connectors.base import ConnectionGetter, ConnectionInfo, SourceError, read_source

__all__ = ["ConnectionGetter", "ConnectionInfo", "SourceError", "read_source"]
