"""What Airflow's metadata DB says about the segments' DAGs (read by the UI's JSON API, which
runs inside the API server)."""

from __future__ import annotations


def paused_dags(dag_ids: list[str]) -> dict[str, bool]:
    """`is_paused` of those of `dag_ids` Airflow knows (a DAG not parsed yet is left out)."""
    import sqlalchemy as sa
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    query = sa.select(DagModel.dag_id, DagModel.is_paused).where(DagModel.dag_id.in_(dag_ids))
    with create_session() as session:
        return {dag_id: paused for dag_id, paused in session.execute(query).all()}
