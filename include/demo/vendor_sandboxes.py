"""The demo's Mixpanel and Amplitude: the fakes the tests run against (`fake_mixpanel`,
`fake_amplitude`), each holding one bundled sample cohort, and the Connections that point at them.

- Mixpanel: project `MIXPANEL_PROJECT`, cohort `CART_ABANDONERS` ("PN_cart_abandoners") read
  through the Engage API in pages of 1,000, as Mixpanel does. Its members are the rows of
  `segments/data/mixpanel_cart_abandoners.csv`, one profile per `$distinct_id` (Mixpanel has no
  profile without one, nor two with the same id: the file's repeated and id-less rows are not
  in the cohort).
- Amplitude: cohort `CHURN_RISK` ("Churn risk - high"): request, poll, then a 302 to a
  pre-signed link on a storage host of its own. Its rows are
  `segments/data/amplitude_churn_risk.parquet`.

The credentials are fixed demo secrets by design: the sandboxes hold made-up people and call
nobody. Neither enforces the vendors' rate limits; the demo Connections still carry budgets.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from include.demo.fake_amplitude import FakeAmplitude
from include.demo.fake_mixpanel import FakeMixpanel
from include.demo.samples import AMPLITUDE_FILE, DATA_DIR, MIXPANEL_FILE

MIXPANEL_LOGIN = ("mixpanel-sandbox", "mixpanel-sandbox-demo-secret")
MIXPANEL_PROJECT = 3_150_001
CART_ABANDONERS = 3151  # include/segments/cart_abandoners.yaml, source.cohort_id
AMPLITUDE_LOGIN = ("amplitude-sandbox-demo-key", "amplitude-sandbox-demo-secret")
CHURN_RISK = "ch7rn2k"  # include/segments/churn_risk.yaml, source.cohort_id
# The variables of the segments' default Connections, `mixpanel_default` and
# `amplitude_default`, by vendor (the sandbox's status names each vendor's base URL).
CONNECTION_VARIABLES = {
    "mixpanel": "AIRFLOW_CONN_MIXPANEL_DEFAULT",
    "amplitude": "AIRFLOW_CONN_AMPLITUDE_DEFAULT",
}


def mixpanel_sandbox(data_dir: Path = DATA_DIR) -> FakeMixpanel:
    login, secret = MIXPANEL_LOGIN
    mixpanel = FakeMixpanel(login, secret, project_id=MIXPANEL_PROJECT)
    mixpanel.add_cohort(
        CART_ABANDONERS,
        "PN_cart_abandoners",
        mixpanel_members(data_dir / MIXPANEL_FILE),
        description="Added to cart, no checkout in 7 days",
    )
    return mixpanel


def mixpanel_members(path: Path) -> list[dict[str, Any]]:
    """One Engage profile per distinct id of a Mixpanel CSV export, the first row's properties
    (the empty ones left out, as Mixpanel leaves out properties a profile does not have)."""
    profiles: dict[str, dict[str, str]] = {}
    with path.open(newline="", encoding="utf-8") as export:
        for row in csv.DictReader(export):
            distinct_id = row.pop("$distinct_id")
            if distinct_id and distinct_id not in profiles:
                profiles[distinct_id] = {key: value for key, value in row.items() if value}
    return [{"$distinct_id": key, "$properties": props} for key, props in profiles.items()]


def amplitude_sandbox(data_dir: Path = DATA_DIR) -> FakeAmplitude:
    import pyarrow.parquet as pq

    api_key, secret_key = AMPLITUDE_LOGIN
    amplitude = FakeAmplitude(api_key, secret_key, polls_before_ready=1)
    rows = pq.read_table(data_dir / AMPLITUDE_FILE).to_pylist()
    amplitude.add_cohort(CHURN_RISK, "Churn risk - high", rows, gzip=True, mode="redirect")
    return amplitude


def connections(mixpanel_url: str, amplitude_url: str) -> dict[str, str]:
    """The AIRFLOW_CONN_* variables that point the default Mixpanel and Amplitude Connections
    at the sandboxes at these base URLs."""
    login, secret = MIXPANEL_LOGIN
    api_key, secret_key = AMPLITUDE_LOGIN
    # A local server needs no long retries, nor an Amplitude poll every 5 s. The sandboxes have
    # no rate limits: the budgets (which pace calls evenly over the hour) allow 100 a second.
    quick = {"timeout": 10, "max_attempts": 3, "backoff_base": 0.5}
    values = {
        "mixpanel": {
            "conn_type": "http",
            "host": mixpanel_url,
            "login": login,
            "password": secret,
            "extra": {"project_id": MIXPANEL_PROJECT, "queries_per_hour": 360_000, **quick},
        },
        "amplitude": {
            "conn_type": "http",
            "host": amplitude_url,
            "login": api_key,
            "password": secret_key,
            "extra": {"poll_interval": 0.5, "max_wait": 120, "requests_per_hour": 360_000, **quick},
        },
    }
    return {CONNECTION_VARIABLES[vendor]: json.dumps(value) for vendor, value in values.items()}
