"""`read_source`, the one entry a refresh calls: from a segment's `source` type to its connector.

Here, and only here, the whole `SegmentConfig` is known. Each connector is handed its source
settings, the segment's fields (`SegmentFields`), and the client and checkpoint it needs, built
here from the Connection and the run folder. The state shared beyond this process (the
vendors' budgets, the audience the webhook staged) lives in the layers above (the store, the
webhooks), so the caller hands it in, typed by protocols of this layer or below (`Budgets`,
`PushedAudience`). The clients' own errors (VendorError) become SourceError here, with their
message unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from include.clients.http import VendorError
from include.connectors.checkpoint import Checkpoint, KeptFiles
from include.connectors.errors import SourceError
from include.connectors.fields import SegmentFields

if TYPE_CHECKING:
    import pyarrow as pa

    from include.clients.budget import Budgets
    from include.clients.connection import ConnectionGetter
    from include.config.segments import SegmentConfig
    from include.connectors.mixpanel_webhook import PushedAudience

BATCH_ROWS = 50_000


def read_source(
    segment: SegmentConfig,
    get_connection: ConnectionGetter,
    workdir: Path,
    batch_rows: int = BATCH_ROWS,
    kept: KeptFiles | None = None,
    *,
    budgets: Budgets | None = None,
    pushed: PushedAudience | None = None,
) -> Iterator[pa.RecordBatch]:
    """Yield batches whose columns are `segment.source_fields`, every value a string or null.

    `workdir` belongs to this run: a connector may keep checkpoints there, so that a retried
    task resumes instead of starting over (`kept` keeps them beyond the step when `workdir` is
    only the step's scratch folder). A connector that cannot read its source completely
    raises SourceError; it never ends early as if the audience were complete. Values that are
    not text become text exactly, or the read fails naming the field (see `exact_text`).

    `budgets`: the vendors' request budgets the Mixpanel and Amplitude clients spend (the
    refresh hands in those every worker shares; without, this process's own). `pushed`: what
    the webhook staged, which a `mixpanel_webhook` source reads (required for one).
    """
    from include.connectors.exact_text import exact_text_batches

    fields = SegmentFields(segment.id, segment.source_fields)
    return exact_text_batches(
        _connector_batches(
            segment, fields, get_connection, workdir, kept, batch_rows, budgets, pushed
        ),
        fields,
        describe_source(segment),
    )


def _connector_batches(
    segment: SegmentConfig,
    fields: SegmentFields,
    get_connection: ConnectionGetter,
    workdir: Path,
    kept: KeptFiles | None,
    batch_rows: int,
    budgets: Budgets | None,
    pushed: PushedAudience | None,
) -> Iterator[pa.RecordBatch]:
    source = segment.source
    try:
        if source.type == "file":
            from include.connectors.file import read_file

            yield from read_file(source, segment.config_path, fields, batch_rows)
        elif source.type == "sql":
            from include.connectors.read_only import source_engine_for
            from include.connectors.sql import read_sql

            engine = source_engine_for(get_connection(source.conn_id))
            try:
                yield from read_sql(source, fields, engine, batch_rows)
            finally:
                engine.dispose()
        elif source.type == "mixpanel":
            from include.clients.mixpanel import MixpanelClient
            from include.connectors.mixpanel import read_mixpanel

            client = MixpanelClient(get_connection(source.conn_id), budgets)
            checkpoint = Checkpoint(workdir / "mixpanel", kept)
            yield from read_mixpanel(source, fields, client, checkpoint)
        elif source.type == "mixpanel_webhook":
            from include.connectors.mixpanel_webhook import read_mixpanel_webhook

            if pushed is None:
                raise ValueError("a mixpanel_webhook source needs the webhook state (`pushed`)")
            yield from read_mixpanel_webhook(fields, pushed, batch_rows)
        elif source.type == "amplitude":
            from include.clients.amplitude import AmplitudeClient
            from include.connectors.amplitude import read_amplitude

            client = AmplitudeClient(get_connection(source.conn_id), budgets)
            checkpoint = Checkpoint(workdir / "amplitude", kept)
            yield from read_amplitude(source, fields, client, checkpoint)
        else:
            raise SourceError(
                f"segment {segment.id!r}: field 'source.type': unsupported {source.type!r}"
            )
    except VendorError as exc:
        raise SourceError(str(exc)) from exc


def describe_source(segment: SegmentConfig) -> str:
    """Where the values come from, as error messages name it ("file data/a.parquet")."""
    source = segment.source
    if source.type == "file":
        from include.connectors.file import resolve_location

        return f"file {resolve_location(source, segment.config_path)}"
    if source.type == "sql":
        return f"the query on connection {source.conn_id!r}"
    if source.type in ("mixpanel", "amplitude"):
        return f"{source.type.capitalize()} cohort {source.cohort_id!r}"
    return f"the {source.type} source"
