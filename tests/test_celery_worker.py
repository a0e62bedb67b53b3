"""The Celery workers' warm-up (include/orchestration/celery_worker.py): what a worker imports
before it forks its pool is in every task process; importing it must start no thread (a fork
after a thread has started can deadlock the child), and Airflow's Celery settings stay."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT

PROBE = """
import json, sys, threading
from celery.signals import worker_init
from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG
from include.orchestration import celery_worker

before = set(sys.modules)
worker_init.send(sender=None)
print(json.dumps({
    "warmed": [m for m in celery_worker.WARM_UP if m in sys.modules],
    "new": [m for m in celery_worker.WARM_UP if m not in before],
    "threads": [t.name for t in threading.enumerate()],
    "config_is_airflows": celery_worker.CELERY_CONFIG is DEFAULT_CELERY_CONFIG,
}))
"""


def test_a_starting_worker_imports_what_tasks_need_and_starts_no_thread():
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    from include.orchestration.celery_worker import WARM_UP

    assert seen["warmed"] == list(WARM_UP)
    assert "great_expectations" in seen["new"]  # imported by the signal, not before it
    assert seen["threads"] == ["MainThread"]
    assert seen["config_is_airflows"]
