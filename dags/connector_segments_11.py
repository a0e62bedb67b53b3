"""Connector segment DAGs of this file's shard; Airflow parses each shard file on its own
(include/orchestration/segment_dags.py)."""

from include.orchestration.segment_dags import shard_dags

globals().update(shard_dags(__file__))
