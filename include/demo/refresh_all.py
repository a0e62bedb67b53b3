"""Refresh every configured segment once, end to end, through its Airflow DAG (`dag.test()`).

Used by `make demo`: the same DAGs the scheduler runs, executed in this process against the
migrated metadata DB in $AIRFLOW_HOME. Exits non-zero if any run did not succeed.
"""

from __future__ import annotations

import sys
from pathlib import Path

DAGS = Path(__file__).resolve().parents[2] / "dags"


def main() -> int:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    if bag.import_errors:
        for path, error in bag.import_errors.items():
            print(f"import error in {path}:\n{error}", file=sys.stderr)
    failed = []
    for dag_id in sorted(d for d in bag.dag_ids if d.startswith("connector_segment_")):
        print(f"refreshing {dag_id} ...", flush=True)
        run = bag.get_dag(dag_id).test()
        print(f"{dag_id}: {run.state}", flush=True)
        if str(run.state) != "success":
            failed.append(dag_id)
    if failed:
        print(f"failed: {', '.join(failed)} (see the task logs above)", file=sys.stderr)
    return 1 if failed or bag.import_errors else 0


if __name__ == "__main__":
    sys.exit(main())
