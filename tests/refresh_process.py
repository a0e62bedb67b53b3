"""One segment's refresh (`dag.test()`) in a process of its own, started on a signal, so that a
test can run several segments at the same moment in separate processes, as separate workers
would (`python -m tests.refresh_process SEGMENT_ID GATE_DIR`).

The process parses the DAG folder its environment names, writes `GATE_DIR/SEGMENT_ID.ready`,
waits for `GATE_DIR/go`, runs the DAG and exits 0 if the run succeeded. Each process needs an
Airflow metadata DB of its own (`AIRFLOW__DATABASE__SQL_ALCHEMY_CONN`): what the processes
share is what a test gives them, e.g. the segment store (`AIRFLOW_CONN_NETMERA_DB`).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def main(segment_id: str, gate: Path) -> int:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    dag = bag.get_dag(f"connector_segment_{segment_id}")
    if dag is None:
        print(f"DAG not loaded; import errors: {bag.import_errors}", file=sys.stderr)
        return 2
    # What a worker that has run a task before holds already: pyarrow's first array imports
    # pandas (~0.3 s alone, seconds when every process does it at once on 2 cores), which
    # would otherwise land between a segment's first and second page.
    import pandas  # noqa: F401
    import pyarrow  # noqa: F401

    (gate / f"{segment_id}.ready").touch()
    while not (gate / "go").exists():
        time.sleep(0.01)
    run = dag.test()
    print(f"{segment_id}: {run.state}")
    return 0 if str(run.state) == "success" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], Path(sys.argv[2])))
