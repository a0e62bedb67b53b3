"""The Connector Segments page, in headless Chromium against a real `airflow standalone`.

One Airflow for the module (scheduler, DAG processor, API server; LocalExecutor) on the demo
data: the seeded Netmera user table (100,000 users), the example segments (manual, so the
scheduler starts nothing by itself) and a small `winback` segment whose second refresh is
Held; a fake Netmera on 127.0.0.1 as `netmera_default`. Every refresh, send, approval and
restore below is a real DAG run the page triggers. What must hold: the page is in Airflow's
nav and shows what the CLI shows; its actions run and the page follows them without a reload;
its routes need the login; it works under a sub-path. Screenshots: tests/artifacts/.

The chart's drawing is checked without a browser (`include.ui.chart` is a pure function).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote
from zoneinfo import ZoneInfo

import pytest
import requests
import yaml

from include.demo.vendor_sandboxes import amplitude_sandbox, connections, mixpanel_sandbox
from include.ui.chart import SERIES, runs_chart
from tests.browser import (
    VIEW_NAME,
    Airflow,
    airflow,
    chromium,
    log_in,
    open_page,
    screenshot,
    wait_for,
)
from tests.conftest import ROOT, cli_json, netmera_conn, sqlite_conn, write_csv
from tests.fakes import FakeNetmera

pytestmark = pytest.mark.dagrun

KEY = "netmera-rest-key-page"
DEMO_SEGMENTS = ("cart_abandoners", "churn_risk", "vip_customers")
WINBACK = "winback"  # published with 400 users, then Held when its source shrinks to 100
RUN_TIMEOUT = 150  # seconds for one DAG run through the scheduler on 2 busy cores
STANDALONE_ENV = {
    "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer",
    "AIRFLOW__CORE__PARALLELISM": "4",
}


# -- the chart, without a browser ----------------------------------------------------------------


def run_row(status: str, day: int, version: int | None, counts: tuple, **extra) -> dict[str, Any]:
    connector, netmera, reachable = counts
    when = datetime(2026, 11, day, 2, 0, tzinfo=UTC)
    return {
        "status": status,
        "started_at": when,
        "finished_at": when + timedelta(minutes=1),
        "version": version,
        "connector_users": connector,
        "netmera_users": netmera,
        "reachable": reachable,
        **extra,
    }


def test_the_chart_draws_each_published_run_oldest_first_with_tooltips():
    runs = [  # newest first, as the store answers
        run_row("published", 4, 3, (3_000, 2_691, 1_617)),
        run_row("held", 3, None, (900, 850, 400)),
        run_row("failed", 2, None, (None, None, None)),
        run_row("published", 1, 1, (2_500, 2_200, None)),
    ]
    svg = runs_chart(runs)
    assert svg.startswith('<svg xmlns="http://www.w3.org/2000/svg"') and svg.endswith("</svg>")
    tips = re.findall(r"<circle [^>]*><title>([^<]*)</title>", svg)
    # Two published runs; the first had no reachable count (push_permitted unmapped).
    assert tips == [
        "Connector Users: 2,500 (v1, 2026-11-01 02:01)",
        "Connector Users: 3,000 (v3, 2026-11-04 02:01)",
        "Netmera Users: 2,200 (v1, 2026-11-01 02:01)",
        "Netmera Users: 2,691 (v3, 2026-11-04 02:01)",
        "Reachable: 1,617 (v3, 2026-11-04 02:01)",
    ]
    assert ">Times in UTC</text>" in svg
    for _, label, _ in SERIES:
        assert f">{label}</text>" in svg  # the legend
    assert ">5,000</text>" in svg and ">0</text>" in svg  # the y axis, thousands separated
    assert ">Nov 01</text>" in svg and ">Nov 04</text>" in svg  # the x axis
    x = [float(v) for v in re.findall(r'<circle cx="([\d.]+)"', svg)]
    assert x[0] < x[1]  # oldest on the left

    # In the viewer's zone, which the chart names: 02:01 UTC is 05:01 in Istanbul.
    istanbul = runs_chart(runs, ZoneInfo("Europe/Istanbul"))
    assert "Reachable: 1,617 (v3, 2026-11-04 05:01)" in istanbul
    assert ">Times in Europe/Istanbul</text>" in istanbul and ">05:01</text>" in istanbul


def test_the_chart_without_a_published_run_says_so():
    svg = runs_chart([run_row("failed", 2, None, (None, None, None))])
    assert "No published refresh yet" in svg and "<circle" not in svg
    assert "<circle" not in runs_chart([])


# -- the module's Airflow ------------------------------------------------------------------------


@dataclass
class Demo:
    airflow: Airflow
    folder: Path
    netmera: FakeNetmera
    admin: requests.Session
    winback_v1_members: list[str]

    def api(self, path: str, session: requests.Session | None = None, **params) -> Any:
        answer = (session or self.admin).get(f"{self.airflow.page}api/{path}", params=params)
        assert answer.status_code == 200, answer.text
        return answer.json()


def copy_demo_segments(folder: Path) -> None:
    """The example segments, manual (the scheduler must start nothing by itself) and each
    with a campaign (the YAMLs' own, or one of ours)."""
    shutil.copytree(ROOT / "include" / "segments" / "data", folder / "data")
    for segment_id in DEMO_SEGMENTS:
        config = yaml.safe_load((ROOT / "include" / "segments" / f"{segment_id}.yaml").read_text())
        config["schedule"] = None
        config.setdefault("campaign", {"title": f"Hello from {segment_id}", "text": "Hi"})
        (folder / f"{segment_id}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def write_winback(folder: Path, users: int) -> None:
    write_csv(
        folder / "data" / "winback.csv",
        ["customer", "ext"],
        [[f"c{i}", f"ext-{i:07d}"] for i in range(1, users + 1)],
    )


WINBACK_YAML = {
    "id": WINBACK,
    "name": 'Win-back <lapsed> & "quiet" users',  # user input: shown as text, never as HTML
    "description": "Lapsed buyers from the CRM export; <b>bold</b> stays literal.",
    "schedule": None,
    "source": {"type": "file", "path": "data/winback.csv"},
    "user_key": "customer",
    "identifiers": [{"field": "ext", "kind": "external_id"}],
    "guardrails": {"max_shrink": 0.5},
    "campaign": {"title": "We miss you", "text": "Come back for 10 % off."},
}


def trigger(demo_admin: requests.Session, base: str, segment_id: str) -> str:
    """A run through Airflow's own API. This set-up step is tried three times: `airflow
    standalone` keeps its metadata in SQLite, which fails a write at once (a 500 "Database
    error") while another process's write is committing."""
    for attempt in range(3):
        answer = demo_admin.post(
            f"{base}/api/v2/dags/connector_segment_{segment_id}/dagRuns",
            json={"logical_date": None},
            timeout=30,
        )
        if answer.status_code != 500 or "Database error" not in answer.text or attempt == 2:
            break
        time.sleep(1)
    assert answer.status_code == 200, answer.text
    return answer.json()["dag_run_id"]


def wait_for_runs(af: Airflow, session: requests.Session, runs: dict[str, str]) -> None:
    """Until each (segment -> run id) run succeeded; fails naming a failed one."""

    def state(segment_id: str, run_id: str) -> str:
        url = f"{af.url}/api/v2/dags/connector_segment_{segment_id}/dagRuns/{quote(run_id)}"
        return session.get(url, timeout=30).json()["state"]

    def done() -> bool:
        states = {s: state(s, r) for s, r in runs.items()}
        assert "failed" not in states.values(), f"{states}\n{af.log_tail()}"
        return all(v == "success" for v in states.values())

    wait_for(done, RUN_TIMEOUT, f"runs {runs}", every=1)


@pytest.fixture(scope="module")
def demo(
    tmp_path_factory: pytest.TempPathFactory, module_env: pytest.MonkeyPatch
) -> Iterator[Demo]:
    work = tmp_path_factory.mktemp("page")
    folder = work / "segments"
    folder.mkdir()
    subprocess.run(
        [sys.executable, "-m", "include.demo.seed", "--db", str(work / "netmera.db"),
         "--warehouse", str(work / "warehouse.db")],
        check=True, capture_output=True, cwd=ROOT,
    )  # fmt: skip
    copy_demo_segments(folder)
    write_winback(folder, 400)
    (folder / f"{WINBACK}.yaml").write_text(yaml.safe_dump(WINBACK_YAML, sort_keys=False))
    for name, value in {
        "CONNECTOR_SEGMENTS_DIR": str(folder),
        "CONNECTOR_SEGMENTS_STAGING_DIR": str(work / "staging"),
        "AIRFLOW_CONN_NETMERA_DB": sqlite_conn(work / "netmera.db"),
        "AIRFLOW_CONN_DEMO_WAREHOUSE": sqlite_conn(work / "warehouse.db"),
    }.items():
        module_env.setenv(name, value)
    with (
        FakeNetmera(api_key=KEY) as netmera,
        mixpanel_sandbox() as mixpanel,  # the demo's own, as `make ui` runs them
        amplitude_sandbox() as amplitude,
    ):
        module_env.setenv("AIRFLOW_CONN_NETMERA_DEFAULT", netmera_conn(netmera, KEY, timeout=5))
        for variable, value in connections(mixpanel.base_url, amplitude.base_url).items():
            module_env.setenv(variable, value)
        home = work / "airflow-home"
        with airflow(home, work / "standalone.log", standalone=True, **STANDALONE_ENV) as af:
            # The vendors' pools, as `make ui` creates them: without, the scheduler leaves the
            # Mixpanel and Amplitude extracts unscheduled.
            subprocess.run(
                [sys.executable, "-m", "include.orchestration.pools"],
                check=True, capture_output=True, cwd=ROOT,
                env={**os.environ, "AIRFLOW_HOME": str(home)},
            )  # fmt: skip
            admin = af.session("admin")
            segments = (*DEMO_SEGMENTS, WINBACK)

            def parsed() -> bool:
                urls = [f"{af.url}/api/v2/dags/connector_segment_{s}" for s in segments]
                return all(admin.get(url, timeout=30).status_code == 200 for url in urls)

            wait_for(parsed, 90, "the segment DAGs to be parsed", every=1)
            wait_for_runs(af, admin, {s: trigger(admin, af.url, s) for s in segments})
            members = sorted(members_of(WINBACK))
            write_winback(folder, 100)  # shrinks by 75 %, past max_shrink: Held
            wait_for_runs(af, admin, {WINBACK: trigger(admin, af.url, WINBACK)})
            yield Demo(af, folder, netmera, admin, members)
        assert netmera.errors == []


def run_cli(*args: str) -> str:
    """`python -m include.cli ARGS` in a process of its own (fixtures have no capsys)."""
    out = subprocess.run(
        [sys.executable, "-m", "include.cli", *args],
        check=True, capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    return out.stdout


def members_of(segment_id: str) -> list[str]:
    return run_cli("members", segment_id).split()


# -- the page's routes ---------------------------------------------------------------------------

KNOWN = "churn_risk"  # fills every path parameter
PATH_PARAM = re.compile(r"\{\w+(?::[^}]*)?\}")  # `{segment_id}`, `{segment_id:converter}`
ASSETS = ("", "static/app.js", "static/app.css")
NOT_AUTHENTICATED = (401, {"detail": "Not authenticated"})
NO_TRIGGER = (
    "You may look at this segment but not act on it (your Airflow role cannot trigger its DAG)"
)


def app_routes() -> list[tuple[str, str]]:
    """(method, path) of every route the plugin's app serves: its own, the mounted JSON API's
    and the webhook app's (which sees its full path), read from the apps themselves so that
    a route added later is covered too."""
    from starlette.routing import Mount

    from include.ui.app import PrefixRoute, app

    def walk(routes: list[Any], prefix: str) -> Iterator[tuple[str, str]]:
        for route in routes:
            if isinstance(route, Mount):
                yield from walk(route.routes, prefix + route.path)
            elif isinstance(route, PrefixRoute):
                yield from walk(route.app.routes, prefix)
            else:
                for method in sorted(set(route.methods or ()) - {"HEAD"}):
                    yield method, prefix + route.path

    return list(walk(app.routes, ""))


def test_every_route_of_the_app_needs_the_login_and_errors_are_plain_http(demo):
    from include.ui.app import WEBHOOKS

    page = demo.airflow.page
    routes = app_routes()
    filled = {(method, PATH_PARAM.sub(KNOWN, path)) for method, path in routes}
    for expected in (
        ("GET", "/"),
        ("GET", "/api/segments"),
        ("GET", f"/api/segments/{KNOWN}/chart.svg"),
        ("POST", f"/api/segments/{KNOWN}/refresh"),
    ):
        assert expected in filled, routes  # the walk sees the page, the API and its actions
    webhooks = [(m, p) for m, p in routes if p.startswith(WEBHOOKS + "/")]
    assert webhooks, routes
    for method, path in routes:
        url = page + PATH_PARAM.sub(KNOWN, path).removeprefix("/")
        body = {"json": {}} if method == "POST" else {}  # the login is refused, not the body
        if (method, path) in webhooks:  # outside the login, with its own Basic auth
            for session in (requests, demo.admin):  # with or without an Airflow token
                answer = session.request(method, url, timeout=30, **body)
                assert answer.status_code == 401, (method, path)
                assert answer.headers["WWW-Authenticate"].startswith("Basic "), (method, path)
                assert answer.json()["status"] == "failure", (method, path)
                assert answer.json()["error"]["code"] == 401, (method, path)
            continue
        answer = requests.request(method, url, timeout=30, **body)
        assert (answer.status_code, answer.json()) == NOT_AUTHENTICATED, (method, path)
    for path in ASSETS:
        answer = demo.admin.get(f"{page}{path}", timeout=30)
        assert answer.status_code == 200, path
        assert "frame-ancestors 'self'" in answer.headers["Content-Security-Policy"], path
    html = demo.admin.get(page, timeout=30).text
    assert 'src="static/app.js"' in html and 'href="static/app.css"' in html
    assert not re.search(r'(src|href)="/', html)  # relative only: a sub-path must work
    chart = demo.admin.get(f"{page}api/segments/{KNOWN}/chart.svg", timeout=30)
    assert chart.status_code == 200 and chart.headers["Content-Type"].startswith("image/svg+xml")
    # Plain {"detail"} errors for the page and the API (not the webhook's Mixpanel shape).
    for path, detail in (
        ("static/nope.js", "no such file: 'nope.js'"),
        ("api/segments/nope/chart.svg", "unknown segment 'nope'"),
        ("nope", "Not Found"),
    ):
        answer = demo.admin.get(f"{page}{path}", timeout=30)
        assert (answer.status_code, answer.json()) == (404, {"detail": detail}), path
    assert demo.admin.get(f"{page}webhooks/mixpanel/x", timeout=30).json()["status"] == "failure"


# -- in the browser ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(demo, chromium_installed) -> Iterator[Any]:
    """One Chromium for the module, logged in as admin."""
    with chromium() as driver:
        log_in(driver, demo.airflow, "admin")
        yield driver


def by_css(driver: Any, selector: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def all_css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def number(text: str) -> int:
    return int(re.sub(r"\D", "", text))


def table_rows(driver: Any) -> list[dict[str, Any]]:
    """The list page's rows as the user reads them."""
    rows = []
    for tr in all_css(driver, "table.segments tbody tr[data-id]"):

        def cell(field: str, tr: Any = tr) -> str:
            return tr.find_element("css selector", f"[data-field={field}]").text

        rows.append(
            {
                "id": tr.get_attribute("data-id"),
                "name": cell("name"),
                "connector_users": number(cell("connector_users")),
                "netmera_users": number(cell("netmera_users")),
                "message_sent": number(cell("message_sent")),
                "status": cell("status").splitlines()[0],  # the badge; its reason below
            }
        )
    return rows


def row_status(driver: Any, segment_id: str) -> str:
    return by_css(driver, f'tr[data-id="{segment_id}"] [data-field=status] .badge').text


def shot(driver: Any, name: str, height: int | None = None) -> Path:
    """A screenshot of the whole UI (the page in its iframe), taller if asked."""
    driver.switch_to.default_content()
    if height:
        driver.set_window_size(1280, height)
    try:
        return screenshot(driver, name)
    finally:
        if height:
            driver.set_window_size(1280, 1000)
        driver.switch_to.frame(by_css(driver, f'iframe[title="{VIEW_NAME}"]'))


def notice(driver: Any) -> str:
    return wait_for(lambda: by_css(driver, "#notice [data-role=message]").text, 20, "a notice")


def listed(driver: Any, demo: Demo) -> list[dict[str, Any]]:
    """Open the page from the nav; its rows once loaded."""
    open_page(driver, demo.airflow)
    return wait_for(lambda: table_rows(driver), 30, "the table's rows")


def test_the_nav_opens_the_page_and_its_table_is_the_clis_list(demo, browser, capsys):
    browser.get(f"{demo.airflow.url}/plugins")  # Admin > Plugins lists it
    wait_for(lambda: "connector_segments" in by_css(browser, "body").text, 30, "Admin > Plugins")
    rows = listed(browser, demo)
    expected = [
        {k: s[k] for k in ("id", "name", "connector_users", "netmera_users", "message_sent")}
        | {"status": s["status"]}
        for s in cli_json(capsys, "list")
    ]
    assert rows == expected
    assert {r["status"] for r in rows} == {"Ready", "Held"}
    assert [r["id"] for r in rows if r["status"] == "Held"] == [WINBACK]
    # User input is text: the name's markup characters are shown, not interpreted.
    assert (
        by_css(browser, f'tr[data-id="{WINBACK}"] [data-field=name]').text == WINBACK_YAML["name"]
    )
    assert not all_css(browser, "table.segments b")
    assert by_css(browser, "[data-role=range]").text == f"1\N{EN DASH}{len(rows)} of {len(rows)}"
    # Dates in local time, the ISO text in the title.
    [first] = [s for s in cli_json(capsys, "list") if s["id"] == rows[0]["id"]]
    stamp = by_css(browser, f'tr[data-id="{rows[0]["id"]}"] [data-field=last_update_date] time')
    assert stamp.get_attribute("title") == first["last_update_date"]
    # How fresh, in words: the examples are manual; the schedule in words on hover.
    fresh = by_css(browser, f'tr[data-id="{rows[0]["id"]}"] [data-field=freshness]')
    fresh_text = r"refreshed (\d+ (minutes?|hours?) ago|this minute) · manual refresh only"
    assert re.fullmatch(fresh_text, fresh.text), fresh.text
    assert fresh.get_attribute("title").startswith("Manual")
    # Held says why on the row itself.
    reason = by_css(browser, f'tr[data-id="{WINBACK}"] [data-field=status_reason]')
    assert reason.get_attribute("title").startswith("Held by a guardrail, not published: ")
    assert "max_shrink" in reason.get_attribute("title")
    shot(browser, "list")
    # Search and the status filter are the API's.
    search = by_css(browser, "input[name=q]")
    search.send_keys("CHURN")
    wait_for(lambda: [r["id"] for r in table_rows(browser)] == ["churn_risk"], 10, "search")
    search.clear()
    search.send_keys(" ")  # an input event: back to every segment
    wait_for(lambda: len(table_rows(browser)) == len(rows), 10, "search cleared")
    from selenium.webdriver.support.ui import Select

    Select(by_css(browser, "select[name=status]")).select_by_visible_text("Held")
    wait_for(lambda: [r["id"] for r in table_rows(browser)] == [WINBACK], 10, "status filter")
    send = by_css(browser, f'tr[data-id="{WINBACK}"] button[data-action=send]')
    assert send.get_attribute("disabled")  # no Send Message unless Ready, and it says why
    assert (
        send.get_attribute("title") == "Send Message needs a Ready segment with a published version"
    )


def test_segment_details_shows_the_chart_why_counts_differ_and_links_to_airflow(
    demo, browser, capsys
):
    listed(browser, demo)
    by_css(browser, 'tr[data-id="churn_risk"] [data-field=name]').click()
    details = cli_json(capsys, "details", "churn_risk", "--runs", "30")
    svg = wait_for(lambda: by_css(browser, "[data-role=chart] svg"), 30, "the chart")
    published = [r for r in details["runs"] if r["status"] == "published"]
    circles = svg.find_elements("css selector", "g[data-series=netmera_users] circle")
    assert len(circles) == len(published) >= 1
    assert by_css(browser, "[data-field=netmera_users]").text == f"{details['netmera_users']:,}"
    assert by_css(browser, "[data-field=reachable]").text == f"{details['reachable']:,}"
    explanation = by_css(browser, "[data-role=explanation]").text
    assert f"Of {details['connector_users']:,} source users" in explanation
    assert f"{details['matched_source_users']:,} matched" in explanation
    assert "Several source users can be one Netmera user" in explanation
    matched_by = {
        tr.get_attribute("data-kind"): number(tr.find_elements("css selector", "td")[1].text)
        for tr in all_css(browser, "[data-role=matched-by] tr[data-kind]")
    }
    assert matched_by == details["matched_by"]
    reasons = {
        tr.get_attribute("data-reason"): number(tr.find_elements("css selector", "td")[1].text)
        for tr in all_css(browser, "[data-role=unmatched] tr[data-reason]")
    }
    assert reasons == details["reasons"]
    assert "Validation: pass" in by_css(browser, "[data-role=last-run]").text
    # Airflow's pages, relative to the iframe and opened in the whole window.
    run_id = details["runs"][0]["airflow_run_id"]
    link = by_css(browser, "[data-role=last-run] a[data-link=dag-run]")
    run_url = f"{demo.airflow.url}/dags/connector_segment_churn_risk/runs/{quote(run_id, safe='')}"
    assert (link.get_attribute("href"), link.get_attribute("target")) == (run_url, "_top")
    log_link = by_css(browser, "[data-role=last-run] a[data-link=log]")
    assert log_link.get_attribute("href") == f"{run_url}/tasks/refresh"
    # Each step's time, from the run record (a file segment's steps share one task).
    steps = by_css(browser, "[data-role=last-run] [data-field=step_seconds]").text
    assert [part.split()[0] for part in steps.split(" · ")] == [
        "extract",
        "match",
        "validate",
        "publish",
    ]
    # How the run matched (no change column in the demo: in full, every source user).
    last = details["runs"][0]
    mode = by_css(browser, "[data-role=last-run] [data-field=mode]").text
    assert mode == f"Full: {last['rematched']:,} source users matched again"
    assert (last["mode"], last["rematched"]) == ("full", last["connector_users"])
    # The downloads answer the CSVs.
    for which in ("members-csv", "unmatched-csv"):
        href = by_css(browser, f"a[data-link={which}]").get_attribute("href")
        answer = demo.admin.get(href, timeout=30)
        assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("text/csv")
    members = demo.admin.get(by_css(browser, "a[data-link=members-csv]").get_attribute("href"))
    assert len(members.text.strip().splitlines()) == details["netmera_users"] + 1  # a header
    shot(browser, "details", height=2600)
    link.click()
    browser.switch_to.default_content()
    opened = wait_for(
        lambda: "/runs/" in browser.current_url and browser.current_url, 30, "the DAG run page"
    )
    assert unquote(opened) == unquote(run_url)


def test_refresh_shows_calculating_then_ready_without_a_reload(demo, browser, capsys):
    listed(browser, demo)
    browser.execute_script("window.sameDocument = true")
    by_css(browser, 'tr[data-id="churn_risk"] button[data-action=refresh]').click()
    message = notice(browser)
    run_id = message.removeprefix("Refresh started (run ").removesuffix(")")
    assert message == f"Refresh started (run {run_id})" and run_id.startswith("refresh__")
    assert row_status(browser, "churn_risk") == "Calculating"
    shot(browser, "refresh-calculating")
    wait_for(lambda: row_status(browser, "churn_risk") == "Ready", RUN_TIMEOUT, "Ready")
    assert browser.execute_script("return window.sameDocument") is True  # no reload
    last = cli_json(capsys, "details", "churn_risk")["runs"][0]
    assert (last["airflow_run_id"], last["status"]) == (run_id, "published")


def test_send_message_through_the_form_reaches_netmera_and_the_report(demo, browser, capsys):
    listed(browser, demo)
    campaign = demo.api("segments/cart_abandoners/campaign")
    by_css(browser, 'tr[data-id="cart_abandoners"] button[data-action=send]').click()
    confirm = wait_for(lambda: by_css(browser, ".modal [data-action=confirm-send]"), 20, "form")
    assert by_css(browser, ".modal [data-field=recipients]").text == f"{campaign['recipients']:,}"
    assert by_css(browser, ".modal [data-field=not_addressable]").text == (
        f"{campaign['not_addressable']:,}"
    )
    title = by_css(browser, ".modal input[name=title]")
    assert title.get_attribute("value") == campaign["title"]
    assert by_css(browser, ".modal textarea[name=text]").get_attribute("value") == campaign["text"]
    title.clear()
    title.send_keys("Your cart <misses> you & more")
    # A 10 % holdout: the form shows the split the API computes before the user confirms.
    split = demo.api(
        "segments/cart_abandoners/campaign",
        holdout_percent=10,
        title="Your cart <misses> you & more",
        text=campaign["text"],
    )
    assert split["holdout"] > 0
    holdout = by_css(browser, ".modal input[name=holdout_percent]")
    holdout.clear()
    holdout.send_keys("10")
    wait_for(
        lambda: by_css(browser, ".modal [data-field=holdout]").text == f"{split['holdout']:,}",
        20,
        "the split",
    )
    assert by_css(browser, ".modal [data-field=recipients]").text == f"{split['recipients']:,}"
    assert confirm.text == f"Send to {split['recipients']:,} users"
    assert "Reachable" in by_css(browser, ".modal [data-role=reachable-note]").text
    shot(browser, "send-form")
    confirm.click()
    assert notice(browser).startswith("Send Message started (run send")
    by_css(browser, 'tr[data-id="cart_abandoners"] button[data-action=report]').click()

    def sent() -> Any:
        rows = all_css(browser, "[data-role=report] tbody tr[data-send]")
        return rows and rows[0].find_element("css selector", "[data-field=status]").text == "sent"

    wait_for(sent, RUN_TIMEOUT, "the send in Message Report, without a reload")
    (report,) = cli_json(capsys, "report", "cart_abandoners")
    row = by_css(browser, "[data-role=report] tbody tr[data-send]")
    assert row.find_element("css selector", "[data-field=title]").text == report["title"]
    assert report["title"] == "Your cart <misses> you & more"
    assert (
        number(row.find_element("css selector", "[data-field=recipients]").text)
        == (report["recipients"])
    )
    assert report["recipients"] == split["recipients"] == len(set(demo.netmera.delivered()))
    assert (report["holdout"], report["holdout_percent"]) == (split["holdout"], 10)
    assert report["recipients"] + report["holdout"] + report["not_addressable"] == split["members"]
    assert (
        number(row.find_element("css selector", "[data-field=holdout]").text.split()[0])
        == (report["holdout"])
    )
    assert row.find_element("css selector", "[data-field=sent_by]").text == "by admin"
    assert row.find_element("css selector", "[data-field=text]").text == report["text"]
    key = row.find_element("css selector", "[data-field=notification_key]").text
    assert key.endswith(str(report["notification_key"]))
    # The held-out users' CSV, from the report's link: none of them was messaged.
    href = row.find_element("css selector", "a[data-link=holdout-csv]").get_attribute("href")
    held_out = demo.admin.get(href, timeout=30).text.split()[1:]
    assert len(held_out) == report["holdout"]
    ext_ids = external_ids(held_out)
    assert ext_ids and not ext_ids & set(demo.netmera.delivered())
    stats = row.find_element("css selector", "[data-field=stats]").text
    for platform in report["stats"]:
        assert f"{platform['platform']} sent {platform['sent']:,}" in stats
    shot(browser, "message-report")


def external_ids(user_ids: list[str]) -> set[str]:
    """The Netmera user ids' extIds, from the demo's user table."""
    import sqlite3

    path = json.loads(os.environ["AIRFLOW_CONN_NETMERA_DB"])["host"]
    with sqlite3.connect(path) as db:
        marks = ",".join("?" * len(user_ids))
        rows = db.execute(
            f"SELECT DISTINCT external_id FROM netmera_users WHERE user_id IN ({marks})",
            user_ids,
        ).fetchall()
    return {ext for (ext,) in rows if ext}


def held_run(details: dict[str, Any]) -> dict[str, Any]:
    return next(r for r in details["runs"] if r["status"] == "held")


def test_approve_shows_what_the_held_refresh_would_change_then_publishes(demo, browser, capsys):
    before = cli_json(capsys, "details", WINBACK)
    held = held_run(before)
    listed(browser, demo)
    by_css(browser, f'tr[data-id="{WINBACK}"] button[data-action=approve]').click()
    reason = wait_for(lambda: by_css(browser, ".modal [data-field=hold_reason]"), 20, "modal")
    assert reason.text == held["hold_reason"] and "max_shrink" in reason.text
    text = by_css(browser, ".modal").text
    assert f"{before['netmera_users']:,} now → {held['netmera_users']:,}" in text
    figures = held["validation"]["counts"]
    assert figures["shrink"] > 0.5
    assert (
        f"Match rate {figures['match_rate'] * 100:.1f} % · shrink {figures['shrink'] * 100:.1f} %"
        in text
    )
    shot(browser, "approve")
    by_css(browser, ".modal [data-action=confirm]").click()
    assert notice(browser).startswith("Approve started (run ")
    wait_for(lambda: row_status(browser, WINBACK) == "Ready", RUN_TIMEOUT, "published")
    after = cli_json(capsys, "details", WINBACK)
    assert (after["netmera_users"], after["current_version"]) == (held["netmera_users"], 2)


def test_restore_makes_the_earlier_version_current_again(demo, browser, capsys):
    listed(browser, demo)
    by_css(browser, f'tr[data-id="{WINBACK}"] [data-field=name]').click()
    button = wait_for(
        lambda: by_css(browser, '[data-role=versions] tr[data-version="1"] button'), 30, "v1"
    )
    assert not button.get_attribute("disabled")
    button.click()
    by_css(browser, ".modal [data-action=confirm]").click()
    assert notice(browser).startswith("Restore started (run ")
    wait_for(
        lambda: (
            by_css(browser, ".page-head .badge").text == "Ready"
            and cli_json(capsys, "details", WINBACK)["status"] == "Ready"
            and members_of(WINBACK) == demo.winback_v1_members
        ),
        RUN_TIMEOUT,
        "version 1's members back",
    )
    wait_for(
        lambda: (
            by_css(browser, "[data-field=netmera_users]").text
            == f"{len(demo.winback_v1_members):,}"
        ),
        20,
        "the page's counts",
    )
    shot(browser, "restored", height=2200)


def disabled_with_reason(driver: Any, selector: str) -> list[tuple[str | None, str | None]]:
    """(disabled, title) of every action button the selector finds."""
    return [
        (b.get_attribute("disabled"), b.get_attribute("title")) for b in all_css(driver, selector)
    ]


def test_a_viewer_reads_every_page_but_its_action_buttons_say_why_it_may_not_act(
    demo, chromium_installed
):
    viewer = demo.airflow.session("viewer")
    refused = viewer.post(f"{demo.airflow.page}api/segments/vip_customers/refresh", timeout=30)
    assert refused.status_code == 403  # the API refuses, whatever the page shows
    listed_rows = demo.api("segments", viewer)["segments"]
    assert {(r["may_trigger"], tuple(r["actions"])) for r in listed_rows} == {(False, ())}
    assert all(r["may_trigger"] for r in demo.api("segments")["segments"])  # admin may
    buttons = "button[data-action=send], button[data-action=refresh], button[data-action=approve]"
    with chromium() as driver:
        log_in(driver, demo.airflow, "viewer")
        rows = listed(driver, demo)
        assert {r["id"] for r in rows} == {*DEMO_SEGMENTS, WINBACK}
        in_list = disabled_with_reason(driver, f"table.segments {buttons}")
        assert len(in_list) >= 2 * len(rows)  # Send Message and Refresh on every row
        assert set(in_list) == {("true", NO_TRIGGER)}
        driver.execute_script("location.hash = '#/segments/vip_customers'")
        wait_for(lambda: by_css(driver, "[data-role=chart] svg"), 30, "the viewer's details")
        in_details = disabled_with_reason(driver, f".page-head {buttons}")
        assert len(in_details) == 2 and set(in_details) == {("true", NO_TRIGGER)}
        # ... and they look it: the primary Send Message is no longer the accent blue.
        send = by_css(driver, ".page-head button[data-action=send]")
        colour = "return getComputedStyle(arguments[0]).backgroundColor"
        assert driver.execute_script(colour, send) != "rgb(37, 99, 235)"
        screenshot(driver, "viewer-details")
        driver.execute_script("location.hash = '#/segments/vip_customers/report'")
        wait_for(lambda: by_css(driver, "[data-role=report]"), 30, "the viewer's report")


def test_at_1024_px_every_action_button_is_in_view(demo, browser):
    browser.set_window_size(1024, 900)
    try:
        listed(browser, demo)
        width = browser.execute_script("return document.documentElement.clientWidth")
        rights = browser.execute_script(
            "return [...document.querySelectorAll('table.segments button')]"
            ".map((b) => b.getBoundingClientRect().right)"
        )
        assert rights and max(rights) <= width, (max(rights), width)
        shot(browser, "list-1024")
    finally:
        browser.set_window_size(1280, 1000)


def test_a_deep_link_survives_the_back_button_and_a_reload(demo, browser):
    listed(browser, demo)
    by_css(browser, 'tr[data-id="vip_customers"] [data-field=name]').click()
    name = wait_for(lambda: by_css(browser, ".page-head h1").text, 30, "the details")

    def top_hash() -> str:
        browser.switch_to.default_content()
        try:
            return browser.execute_script("return location.hash")
        finally:
            browser.switch_to.frame(by_css(browser, f'iframe[title="{VIEW_NAME}"]'))

    def into_page() -> None:  # WebDriver's back and forward leave the iframe
        browser.switch_to.default_content()
        browser.switch_to.frame(by_css(browser, f'iframe[title="{VIEW_NAME}"]'))

    assert top_hash() == "#/segments/vip_customers"  # the UI's own URL names the view
    browser.back()
    into_page()
    wait_for(lambda: table_rows(browser), 30, "the list, back")
    assert top_hash() == ""
    browser.forward()
    into_page()
    wait_for(lambda: by_css(browser, ".page-head h1").text == name, 30, "the details, forward")
    browser.switch_to.default_content()
    browser.refresh()
    frame = wait_for(lambda: by_css(browser, f'iframe[title="{VIEW_NAME}"]'), 60, "the iframe")
    browser.switch_to.frame(frame)
    wait_for(lambda: by_css(browser, ".page-head h1").text == name, 30, "the details, reloaded")
    # A malformed link says so, with no script error.
    browser.execute_script(
        "window.pageErrors = [];"
        "addEventListener('error', (e) => pageErrors.push(String(e.message)));"
        "addEventListener('unhandledrejection', (e) => pageErrors.push(String(e.reason)));"
        "location.hash = '#/segments/%E0%A4%A'"
    )
    wait_for(lambda: by_css(browser, "[data-role=bad-link]"), 20, "the malformed link's notice")
    assert browser.execute_script("return window.pageErrors") == []


def test_a_failed_refresh_says_why_on_the_list_and_links_its_log_in_details(demo, browser):
    source = demo.folder / "data" / "winback.csv"
    source.rename(source.with_suffix(".gone"))
    try:
        listed(browser, demo)
        by_css(browser, f'tr[data-id="{WINBACK}"] button[data-action=refresh]').click()
        assert notice(browser).startswith("Refresh started (run ")
        wait_for(lambda: row_status(browser, WINBACK) == "Failed", RUN_TIMEOUT, "Failed")
    finally:
        source.with_suffix(".gone").rename(source)
    run = demo.api(f"segments/{WINBACK}")["runs"][0]
    # The step that failed, and the task that ran it: a file segment's refresh is one task.
    assert (run["status"], run["failed_step"], run["log_task"]) == ("failed", "extract", "refresh")
    row_reason = by_css(browser, f'tr[data-id="{WINBACK}"] [data-field=status_reason]')
    assert row_reason.get_attribute("title") == (
        f"The last refresh failed in extract: {run['error']}. The published membership is "
        "unchanged."
    )
    shot(browser, "list-failed")
    by_css(browser, f'tr[data-id="{WINBACK}"] [data-field=name]').click()
    error = wait_for(
        lambda: by_css(browser, "[data-role=last-run] [data-field=error]"), 30, "the error"
    )
    assert not by_css(browser, "#notice").is_displayed()  # the notice stayed with its page
    assert error.text == f"Failed in extract: {run['error']}"
    log = by_css(browser, "[data-role=last-run] a[data-link=log]")
    run_path = f"/runs/{quote(run['airflow_run_id'], safe='')}"
    assert log.get_attribute("href").endswith(f"{run_path}/tasks/refresh")  # it ran extract
    newest = by_css(browser, "[data-role=runs] tbody tr")
    assert newest.get_attribute("data-status") == "failed"
    assert newest.find_element("css selector", "[data-link=log]").text == "log of refresh"
    note = newest.find_element("css selector", "[data-field=note] .clamp")
    assert note.get_attribute("title") == f"extract: {run['error']}"
    shot(browser, "details-failed", height=2600)


def test_the_page_loads_its_data_under_a_sub_path(demo, chromium_installed, tmp_path):
    """A second API server on the same metadata DB and store, at http://host:port/airflow."""
    with (
        airflow(
            demo.airflow.home,
            tmp_path / "api-server.log",
            standalone=False,
            sub_path="/airflow",
            **STANDALONE_ENV,
        ) as sub,
        chromium() as driver,
    ):
        assert sub.url.endswith("/airflow")
        log_in(driver, sub, "admin")
        open_page(driver, sub)
        rows = wait_for(lambda: table_rows(driver), 30, "rows")
        api = demo.api("segments")["segments"]
        assert [(r["id"], r["netmera_users"]) for r in rows] == [
            (s["id"], s["netmera_users"]) for s in api
        ]
        assert driver.execute_script("return location.pathname") == "/airflow/connector-segments/"
        driver.execute_script("location.hash = '#/segments/churn_risk'")
        link = wait_for(lambda: by_css(driver, "a[data-link=dag-run]"), 30, "details")
        assert link.get_attribute("href").startswith(
            f"{sub.url}/dags/connector_segment_churn_risk/"
        )
        shot(driver, "sub-path")


def test_the_versions_card_shows_the_newest_five_and_the_rest_on_a_click(demo, browser, capsys):
    segment = "vip_customers"
    before = len(cli_json(capsys, "details", segment)["versions"])
    for _ in range(5):  # one after another; each publishes a version, changed or not
        run = trigger(demo.admin, demo.airflow.url, segment)
        wait_for_runs(demo.airflow, demo.admin, {segment: run})
    kept = [v["version"] for v in cli_json(capsys, "details", segment)["versions"]]
    assert len(kept) == before + 5 and kept == sorted(kept, reverse=True)
    listed(browser, demo)
    by_css(browser, f'tr[data-id="{segment}"] [data-field=name]').click()
    more = wait_for(lambda: by_css(browser, "[data-role=more-versions] button"), 30, "Show all")

    def shown() -> list[int]:
        rows = all_css(browser, "[data-role=versions] tr[data-version]")
        return [int(r.get_attribute("data-version")) for r in rows if r.is_displayed()]

    assert (shown(), more.text) == (kept[:5], f"Show all {len(kept)} kept versions")
    more.click()
    assert (shown(), all_css(browser, "[data-role=more-versions]")) == (kept, [])
    shot(browser, "versions-all", height=2600)
