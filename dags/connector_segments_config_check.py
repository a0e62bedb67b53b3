"""Reports invalid segment YAML files as this file's import error, in the Airflow UI.

It defines no DAG on purpose: Airflow marks every DAG of a file with an import error as stale,
so the error must not land on a shard file (`connector_segments_<NN>.py`), which builds the
segment DAGs of its shard.
The message names each bad file and field, as `python -m include.cli validate` does.
(Airflow's safe mode parses only files that mention both "airflow" and "dag": this one does.)
"""

from __future__ import annotations

from include.config.segments import SegmentConfigError, load_segments

_errors = load_segments().errors
if _errors:
    raise SegmentConfigError(
        f"{len(_errors)} invalid segment YAML file(s); their DAGs are not loaded, every other "
        "segment's is:\n" + "\n".join(str(e) for e in _errors)
    )
