"""Command line for connector segments: `python -m include.cli COMMAND`.

    validate            check every segment YAML; errors name the file and field (exit 1)
    list [--json]       the Connector Segments table
    discover mixpanel [--prefix PN_] [--write]
                        the project's cohorts; --write adds a YAML skeleton per cohort
    details ID [--json] the segment and its last runs: counts, reasons, matches per kind
    members ID          the current members' Netmera user ids, one a line
    history ID --user NETMERA_USER_ID [--json]
                        when that user entered and left the segment (kept versions)
    doctor [--json]     netmera_db, store migrations and user table indexes: what is missing
    report ID [--json]  Message Report: sends, recipients, holdout, sender, status and Netmera
                        delivery stats
    restore ID --version N [--json]
                        make kept version N current again, as a run of the segment's DAG:
                        triggered through the Airflow API server when the Connection
                        `connector_segments_api` is defined, else run here by dag.test()

The store is read through the `netmera_db` Airflow Connection (e.g. `AIRFLOW_CONN_NETMERA_DB`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.clients.http import VendorError
from include.config.segments import SegmentConfigError, dag_id_of, load_segments

if TYPE_CHECKING:
    from include.clients.connection import ConnectionInfo

# An http Connection: host = the Airflow API server's base URL, login/password = an Airflow user.
API_CONN_ID = "connector_segments_api"

LIST_COLUMNS = [
    ("name", "Segment Name"),
    ("connector_users", "Connector Users"),
    ("netmera_users", "Netmera Users"),
    ("message_sent", "Message Sent"),
    ("description", "Description"),
    ("last_update_date", "Last Update Date"),
    ("status", "Status"),
]


def _store():
    from include.orchestration.connections import netmera_database

    return netmera_database().store


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    line = "  ".join("-" * w for w in widths)
    fmt = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(
        [" | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)), line, *fmt]
    )


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-" if key != "status" else "Never run"
    if isinstance(value, int):
        return f"{value:,}"
    if key == "description" and len(value) > 48:
        return value[:47] + "…"
    if key == "last_update_date":
        return value.replace("T", " ").replace("Z", " UTC")
    return str(value)


def cmd_validate(args: argparse.Namespace) -> int:
    loaded = load_segments(Path(args.dir) if args.dir else None)
    for config in loaded.segments:
        print(f"ok     {config.config_path}  ({config.dag_id})")
    for error in loaded.errors:
        print(f"ERROR  {error}", file=sys.stderr)
    print(f"{len(loaded.segments)} valid, {len(loaded.errors)} invalid")
    return 1 if loaded.errors else 0


def cmd_list(args: argparse.Namespace) -> int:
    from include.store.views import list_rows

    rows = list_rows(_store())
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        _table(
            [h for _, h in LIST_COLUMNS], [[_cell(k, r[k]) for k, _ in LIST_COLUMNS] for r in rows]
        )
    )
    return 0


def _print_details(d: dict[str, Any]) -> None:
    print(f"{d['name']}  [{d['id']}]  source: {d['source_type']}")
    print(f"Status: {d['status']}" + (f"  ({d['status_reason']})" if d["status_reason"] else ""))
    print(
        f"Published version: {d['current_version'] or '-'}   Last update: "
        f"{_cell('last_update_date', d['last_update_date'])}"
    )
    print(
        f"Connector Users {_cell('connector_users', d['connector_users'])}   Netmera Users "
        f"{_cell('netmera_users', d['netmera_users'])}   "
        f"Reachable {_cell('reachable', d['reachable'])}   Message Sent {d['message_sent']:,}"
    )
    if d["versions"]:
        kept = ", ".join(_version_label(v) for v in d["versions"])
        print(f"Kept versions: {kept}  (restore ID --version N)")
    for run in d["runs"]:
        print()
        version = f" v{run['version']}" if run["version"] else ""
        if run["restored_from"]:
            version += f" (restore of v{run['restored_from']})"
        print(
            f"run {run['airflow_run_id']}  {run['status']}{version}"
            f"{'  (dry run)' if run['dry_run'] else ''}{'  (approved)' if run['approve'] else ''}"
            f"  started {run['started_at']}"
            + (f"  [{run['kind']}, Airflow: {run['airflow_state']}]" if run.get("kind") else "")
        )
        if run["connector_users"] is not None:
            print(
                f"  Connector Users {run['connector_users']:,} -> matched "
                f"{run['matched_source_users']:,} source users -> Netmera Users "
                f"{run['netmera_users']:,} (reachable {_cell('reachable', run['reachable'])})"
            )
            print("  matched by: " + ", ".join(f"{k} {v:,}" for k, v in run["matched_by"].items()))
            if run.get("mode"):
                print(f"  {run['mode']} match: {run['rematched']:,} source users matched again")
            print("  unmatched:  " + ", ".join(f"{k} {v:,}" for k, v in run["reasons"].items()))
        if run["refused_rows"]:
            print(f"  refused rows without a user key: {run['refused_rows']:,}")
        if run["added"] is not None:
            print(
                f"  vs version {run['base_version'] or '-'}: +{run['added']:,} added, "
                f"-{run['removed']:,} removed"
            )
        if run["validation"]:
            v = run["validation"]
            print(
                f"  validation: {v['outcome']}  (data {_ratio(v['data'])}, guardrails "
                f"{_ratio(v['guardrails'])})"
                + (f"  approved: {v['approved']}" if v.get("approved") else "")
            )
        if run["step_seconds"]:
            print("  steps: " + ", ".join(f"{k} {v:.1f} s" for k, v in run["step_seconds"].items()))
        if run["hold_reason"]:
            print(f"  held: {run['hold_reason']}")
        if run["error"]:
            print(f"  failed in {run['failed_step']}: {run['error']}")
        if run.get("log_task") and run["status"] == "failed":
            print(f"  log: task {run['log_task']} of that run in Airflow")


def _version_label(v: dict[str, Any]) -> str:
    notes = ["current"] if v["current"] else []
    notes.append(f"Netmera Users {v['netmera_users']:,}")
    if v["restored_from"]:
        notes.append(f"restore of v{v['restored_from']}")
    return f"v{v['version']} ({', '.join(notes)})"


def _ratio(part: dict[str, Any]) -> str:
    stats = part["statistics"]
    return f"{stats['successful_expectations']}/{stats['evaluated_expectations']} passed"


def cmd_details(args: argparse.Namespace) -> int:
    from include.store.views import details as segment_details
    from include.store.views import never_ran

    details = segment_details(_store(), args.id, args.runs, _airflow_runs(args.id))
    if details is None:
        print(never_ran(args.id), file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(details, indent=2, default=str))
    else:
        _print_details(details)
    return 0


def _airflow_runs(segment_id: str) -> list[dict[str, Any]] | None:
    """The segment DAG's runs as Airflow knows them, to list those no step recorded; None
    (the store's runs only) where Airflow's metadata DB cannot be read."""
    from include.orchestration.dag_state import recent_runs

    try:
        return recent_runs(dag_id_of(segment_id), 20)
    except Exception as exc:  # no Airflow metadata DB here: the store's records still tell
        print(
            f"warning: Airflow's runs not read ({type(exc).__name__}); store records only",
            file=sys.stderr,
        )
        return None


def cmd_members(args: argparse.Namespace) -> int:
    store = _store()
    row = store.segment(args.id)
    if row is None or row["current_version"] is None:
        print(f"segment {args.id!r} has no published membership", file=sys.stderr)
        return 1
    out = sys.stdout
    for user_id in store.member_ids(args.id):
        out.write(f"{user_id}\n")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    from include.store.views import history, never_ran

    found = history(_store(), args.id, args.user)
    if found is None:
        print(never_ran(args.id), file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    oldest, current = found["oldest_kept_version"], found["current_version"]
    kept = f"kept versions {oldest}-{current}" if current else "nothing published"
    state = "a member now" if found["member"] else "not a member now"
    print(f"Segment {args.id}, Netmera user {args.user}: {state} ({kept})")
    if not found["events"]:
        print("  never a member in the kept versions")
    for event in found["events"]:
        how = f" (matched by {event['matched_by']})" if event.get("matched_by") else ""
        print(f"  v{event['version']:<5} {event['at'] or '-':<21} {event['change']}{how}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from include.campaign.report import message_report
    from include.orchestration.connections import netmera_client, netmera_database

    report, warning = message_report(args.id, args.limit, netmera_database().sends, netmera_client)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    if not report:
        print(f"segment {args.id!r}: no messages sent yet")
        return 0
    for r in report:
        print(
            f"{r['time']}  v{r['version']}  {r['title']!r}  {r['status']}  "
            + (f"to those who entered after v{r['since_version']}  " if r["since_version"] else "")
            + f"{r['recipients']:,}/{r['planned']:,} sent  notification {r['notification_key']}"
            + (f"  uncertain {r['uncertain']:,}" if r["uncertain"] else "")
            + (
                f"  held out {r['holdout']:,} ({r['holdout_percent']:g}%)"
                if r["holdout_percent"] or r["holdout"]
                else ""
            )
            + (f"  not addressable {r['not_addressable']:,}" if r["not_addressable"] else "")
            + (f"  by {r['sent_by']}" if r["sent_by"] else "")
        )
        if r["error"]:
            print(f"    failed: {r['error']}")
        for stat in r["stats"] or []:
            print(
                f"    {stat['platform']:<8} sent {stat['sent']:,}  failed {stat['failed']:,}  "
                f"clicked {stat['clicked']:,}"
            )
        if r.get("stats_error"):
            print(f"    stats unavailable: {r['stats_error']}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from include.orchestration.connections import ConnectionNotDefined, get_connection

    try:
        api = get_connection(API_CONN_ID)
    except ConnectionNotDefined:
        api = None
    if api:
        outcome = _restore_through_api(api, args.id, args.version)
    else:
        outcome = _restore_here(args.id, args.version)
        if outcome is None:
            return 1
    if args.json:
        print(json.dumps(outcome, indent=2))
    elif outcome["version"] is None:
        print(
            f"segment {args.id!r}: restore of version {args.version} triggered: "
            f"DAG run {outcome['dag_run_id']}"
        )
    else:
        print(
            f"segment {args.id!r}: version {outcome['restored_from']} restored as version "
            f"{outcome['version']}: +{outcome['added']:,} added, -{outcome['removed']:,} removed "
            f"(DAG run {outcome['dag_run_id']})"
        )
    return 0


def _restored(segment_id: str, version: int, dag_run_id: str, run: dict | None) -> dict:
    """What `restore --json` prints; the run's outcome is None until the run has ended."""
    done = run or {}
    return {
        "segment_id": segment_id,
        "restored_from": version,
        "version": done.get("version"),
        "added": done.get("added"),
        "removed": done.get("removed"),
        "dag_run_id": dag_run_id,
    }


def _restore_here(segment_id: str, version: int) -> dict | None:
    """The restore as a run of the segment's DAG in this process (`dag.test()`, on the
    migrated Airflow metadata DB of $AIRFLOW_HOME); None, having said why, if it failed."""
    import sqlalchemy as sa
    from airflow.dag_processing.dagbag import DagBag

    from include.orchestration.dag_state import dag_states
    from include.orchestration.segment_dags import dag_file

    store = _store()
    store.check_restorable(segment_id, version)  # refused before any run: RestoreRefused
    dag_id = dag_id_of(segment_id)
    with _stdout_to_stderr():  # Airflow's task logs: stdout is for the outcome (--json)
        try:
            dag = DagBag(dag_folder=str(dag_file(segment_id))).get_dag(dag_id)
            if dag is None:
                raise LookupError(
                    f"segment {segment_id!r} has no DAG: its YAML is missing or invalid"
                )
            # dag.test() does not queue behind the scheduler's runs (max_active_runs): a
            # refresh in flight would be marked abandoned by the restore's start.
            state = dag_states([dag_id]).get(dag_id)
            if state and state.active_run:
                raise LookupError(
                    f"segment {segment_id!r}: run {state.active_run['dag_run_id']} is "
                    f"{state.active_run['state']}; restore once it has ended"
                )
            dag_run = dag.test(run_conf={"restore_version": version})
        except sa.exc.OperationalError as exc:  # e.g. "no such table: dag"
            raise LookupError(
                "restore runs the DAG here with dag.test(), which needs a migrated Airflow "
                f"metadata DB (airflow db migrate; AIRFLOW_HOME={os.environ.get('AIRFLOW_HOME')})"
                f", or the Connection {API_CONN_ID!r} to the API server: {exc.orig}"
            ) from None
    run = store.run(segment_id, dag_run.run_id)
    if run is None or run["status"] != "published":
        error = (run and run["error"]) or f"the DAG run ended {dag_run.state}"
        print(
            f"segment {segment_id!r}: restore of version {version} failed: {error}", file=sys.stderr
        )
        return None
    return _restored(segment_id, version, dag_run.run_id, run)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Everything written to stdout goes to stderr meanwhile, by whichever stream object: Airflow's
    loggers hold the stdout they were configured with, so the file descriptor moves too."""
    sys.stdout.flush()
    sys.__stdout__.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.__stdout__.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _restore_through_api(api: ConnectionInfo, segment_id: str, version: int) -> dict:
    """Trigger the restore run through the Airflow API server (as the Connection's user, so
    the run names them); returns as soon as the run is queued."""
    from urllib.parse import quote

    import requests

    base = _api_base(api)
    if not base:
        raise LookupError(f"Airflow Connection {API_CONN_ID!r} has no host (the API server URL)")
    try:
        login = requests.post(
            f"{base}/auth/token",
            json={"username": api.login, "password": api.password},
            timeout=30,
        )
        if not login.ok:
            raise LookupError(
                f"the Airflow API server at {base} refused the login of Connection "
                f"{API_CONN_ID!r}: HTTP {login.status_code}"
            )
        answer = requests.post(
            f"{base}/connector-segments/api/segments/{quote(segment_id, safe='')}/restore",
            json={"version": version},
            headers={"Authorization": f"Bearer {login.json()['access_token']}"},
            timeout=60,
        )
    except requests.RequestException as exc:
        raise LookupError(f"cannot reach the Airflow API server at {base}: {exc}") from None
    if answer.status_code != 202:
        raise ValueError(
            f"segment {segment_id!r}: restore of version {version} refused by {base}: "
            f"HTTP {answer.status_code}: {_detail(answer)}"
        )
    return _restored(segment_id, version, answer.json()["dag_run_id"], None)


def _api_base(api: ConnectionInfo) -> str:
    """The API server's base URL: the host as a full URL (`{"conn_type": "http", "host":
    "http://host:8080/airflow", ...}`), or the parts Airflow splits a URI Connection into
    (`http://user:password@host:8080/airflow`: the path lands in `schema`)."""
    host = (api.host or "").rstrip("/")
    if not host or "://" in host:
        return host
    scheme = api.conn_type if api.conn_type in ("http", "https") else "http"
    port = f":{api.port}" if api.port else ""
    path = f"/{api.schema.strip('/')}" if api.schema else ""
    return f"{scheme}://{host}{port}{path}"


def _detail(answer: Any) -> str:
    """The API's reason ({"detail": ...}), or the start of whatever else it answered."""
    try:
        detail = answer.json()["detail"]
    except (ValueError, KeyError, TypeError):
        return answer.text[:300]
    return detail if isinstance(detail, str) else json.dumps(detail)[:300]


def cmd_discover(args: argparse.Namespace) -> int:
    from include.clients.mixpanel import MixpanelClient
    from include.config.discovery import mixpanel_cohorts, segment_id_for, write_skeletons
    from include.config.segments import segments_dir
    from include.orchestration.connections import get_connection

    cohorts = mixpanel_cohorts(MixpanelClient(get_connection(args.conn_id)), args.prefix)
    if args.json:
        print(
            json.dumps(
                [
                    {"id": c.id, "name": c.name, "count": c.count, "segment_id": segment_id_for(c)}
                    for c in cohorts
                ],
                indent=2,
            )
        )
    else:
        print(
            _table(
                ["Cohort id", "Name", "Count"],
                [[str(c.id), c.name, _cell("count", c.count)] for c in cohorts],
            )
        )
    if args.write:
        for path, written in write_skeletons(cohorts, segments_dir(), args.conn_id):
            print(
                f"{'wrote ' if written else 'kept  '} {path}"
                f"{'' if written else '  (exists; not overwritten)'}",
                file=sys.stderr,
            )
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from include.orchestration.doctor import as_json, diagnose, render

    checks = diagnose()
    report = as_json(checks)
    print(json.dumps(report, indent=2) if args.json else render(checks))
    return 0 if report["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m include.cli",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("validate", help="validate every segment YAML")
    p.add_argument("--dir", help="segments folder (default: $CONNECTOR_SEGMENTS_DIR)")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("list", help="the Connector Segments table")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("details", help="a segment's last runs, counts and reasons")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.add_argument("--runs", type=int, default=5, help="how many recent runs (default 5)")
    p.set_defaults(func=cmd_details)
    p = sub.add_parser("members", help="current members' Netmera user ids, one a line")
    p.add_argument("id")
    p.set_defaults(func=cmd_members)
    p = sub.add_parser("history", help="when a Netmera user entered and left the segment")
    p.add_argument("id")
    p.add_argument("--user", required=True, help="the Netmera user id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_history)
    p = sub.add_parser("report", help="Message Report: the segment's sends and delivery stats")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.add_argument("--limit", type=int, default=20, help="how many recent sends (default 20)")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("restore", help="make an earlier kept version current again")
    p.add_argument("id")
    p.add_argument("--version", type=int, required=True, help="the kept version to restore")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_restore)
    p = sub.add_parser("discover", help="list a vendor's cohorts; --write makes YAML skeletons")
    p.add_argument("vendor", choices=["mixpanel"])
    p.add_argument("--prefix", help="only cohorts whose name starts with this, e.g. PN_")
    p.add_argument("--conn-id", default="mixpanel_default")
    p.add_argument(
        "--write",
        action="store_true",
        help="write a YAML skeleton per cohort into the segments folder",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_discover)
    p = sub.add_parser("doctor", help="check netmera_db, store migrations, user table indexes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_doctor)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (SegmentConfigError, VendorError, LookupError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
