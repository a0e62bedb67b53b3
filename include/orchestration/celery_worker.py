"""The Celery workers' configuration: Airflow's own, plus a warm-up when a worker starts.

    AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS=include.orchestration.celery_worker.CELERY_CONFIG

On Linux every task runs in a process that Airflow's supervisor forks from its Celery worker's
pool process, itself forked from the worker. A module the worker imported before it forked its
pool is in every task process already, at no cost. Imported by each task instead, Great
Expectations, pandas, pyarrow and DuckDB cost ~4 CPU-seconds, twice a small refresh's data
work (docs/decisions.md, "Task layout"). So the worker imports them, and the modules a task's
parse and steps import, once at start. Importing starts no thread (tests/test_celery_worker.py), so
forking after it is safe.

The scheduler imports this module too (it reads the Celery settings) but never starts a
worker: the warm-up runs only on Celery's `worker_init`, in the worker's main process.
"""

from __future__ import annotations

import importlib
import logging

from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG
from celery.signals import worker_init

log = logging.getLogger(__name__)

CELERY_CONFIG = DEFAULT_CELERY_CONFIG
# What a refresh's task imports: the heavy libraries, then this project's steps (which import
# the rest of it) and the DAG factory a task's parse runs.
WARM_UP = (
    "great_expectations",
    "pandas",
    "pyarrow.parquet",
    "duckdb",
    "include.orchestration.segment_dags",
    "include.orchestration.refresh",
    "include.connectors",
    "include.matching.pipeline",
    "include.validation.checks",
    "include.campaign.message",
)


@worker_init.connect
def warm_up(**_signal) -> None:
    """Import WARM_UP; a module that fails to import is the task's to report, not the
    worker's: it is logged and left to the task."""
    for name in WARM_UP:
        try:
            importlib.import_module(name)
        except Exception as exc:
            log.warning("worker warm-up: %s not imported: %s", name, exc)
