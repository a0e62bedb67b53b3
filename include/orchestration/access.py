"""Per-team access to segments under FAB's auth manager: a segment's `access` (role → read |
act) becomes its DAG's `access_control`, and `sync` makes the roles it names.

    python -m include.orchestration.access sync [--json]

`sync` (idempotent; compose's init runs it, and it must run after a YAML adds a role): every
role named in any segment's `access` exists and holds exactly TEAM_ROLE_PERMISSIONS (what a
user needs to open the Connector Segments page and read task logs, nothing of Connections,
Variables, Pools or other DAGs) plus the DAG permissions the YAMLs grant it; each segment's DAG
permissions are set from its YAML (a segment without `access` grants no team role anything).
Airflow's DAG processor syncs a DAG's `access_control` too whenever it writes the DAG, but it
refuses a role that does not exist: hence the roles first, from the YAMLs, before a deploy's
DAG processor parses them. Built-in roles (Admin, Op, User, Viewer) keep their global
permissions and are never touched. Under SimpleAuthManager (the embedded default) `access`
has no effect: its roles are global.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from include.config.segments import SegmentConfig, load_segments

# FAB's DAG-level resources: "DAGs" (the DAG itself) and "DAG Runs". Triggering a run (each
# action of the page) needs can_create on its runs and can_edit on the DAG: FAB's rule, which
# also lets `act` pause, clear and mark that DAG's runs in Airflow's own UI.
READ = {"DAGs": {"can_read"}, "DAG Runs": {"can_read"}}
ACT = {"DAGs": {"can_read", "can_edit"}, "DAG Runs": {"can_read", "can_create"}}
LEVELS = {"read": READ, "act": ACT}

# A team role's permissions besides its DAGs': the UI (Website), the nav entry of the page
# (the UI learns external views from the Plugins list), the Dags list and each run's task
# logs (FAB checks these globally, then the DAG's own read permission), the user's profile.
TEAM_ROLE_PERMISSIONS = frozenset(
    {
        ("can_read", "Website"),
        ("can_read", "Plugins"),
        ("menu_access", "DAGs"),
        ("can_read", "Task Instances"),
        ("can_read", "Task Logs"),
        ("can_read", "My Profile"),
        ("can_edit", "My Profile"),
        ("can_read", "My Password"),
        ("can_edit", "My Password"),
    }
)
DAG_RESOURCE_PREFIXES = ("DAG:", "DAG Run:")


def access_control(config: SegmentConfig) -> dict[str, dict[str, set[str]]] | None:
    """The DAG's `access_control` for the segment's `access` (None: no `access` key)."""
    if config.access is None:
        return None
    return {
        role: {k: set(v) for k, v in LEVELS[level].items()} for role, level in config.access.items()
    }


@dataclass
class SyncReport:
    roles_created: list[str] = field(default_factory=list)
    roles_reset: list[str] = field(default_factory=list)  # their other permissions put right
    segments_with_access: int = 0
    dags_synced: int = 0
    invalid: list[str] = field(default_factory=list)  # YAMLs not synced: fix, then sync again


def team_roles(segments: Iterable[SegmentConfig]) -> list[str]:
    return sorted({role for config in segments for role in (config.access or {})})


def sync() -> SyncReport:
    """Roles, then the segments' DAG permissions, from the YAMLs; see the module's doc."""
    from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder

    loaded = load_segments()
    report = SyncReport(invalid=[str(error) for error in loaded.errors])
    with get_application_builder() as appbuilder:
        manager = appbuilder.sm
        # As `airflow sync-perm`: the built-in roles and every resource and action exist.
        appbuilder.add_permissions(update_perms=True)
        manager.sync_roles()
        for name in team_roles(loaded.segments):
            _make_team_role(manager, name, report)
        manager.session.commit()
        granted = _dags_granted_to_teams(manager)
        for config in loaded.segments:
            report.segments_with_access += config.access is not None
            if config.access is None and config.dag_id not in granted:
                continue  # nothing to grant nor to revoke: skip FAB's queries (10,000 DAGs)
            # {} for a segment without `access`: FAB revokes what team roles held on it.
            manager.sync_perm_for_dag(config.dag_id, access_control(config) or {})
            report.dags_synced += 1
        manager.session.commit()
    return report


def _make_team_role(manager, name: str, report: SyncReport) -> None:
    """The role exists with exactly TEAM_ROLE_PERMISSIONS besides its DAG permissions."""
    role = manager.find_role(name)
    if role is None:
        role = manager.add_role(name)
        report.roles_created.append(name)
    dag_permissions = [p for p in role.permissions if _is_dag_resource(p.resource.name)]
    others = {(p.action.name, p.resource.name) for p in role.permissions} - {
        (p.action.name, p.resource.name) for p in dag_permissions
    }
    if others != TEAM_ROLE_PERMISSIONS:
        if name not in report.roles_created:
            report.roles_reset.append(name)
        wanted = [manager.create_permission(*pair) for pair in sorted(TEAM_ROLE_PERMISSIONS)]
        role.permissions = dag_permissions + wanted


def _dags_granted_to_teams(manager) -> set[str]:
    """DAG ids on which some role other than Admin holds a DAG-level permission."""
    granted = set()
    for role in manager.get_all_roles():
        if role.name == "Admin":
            continue
        for permission in role.permissions:
            name = permission.resource.name
            if _is_dag_resource(name):
                granted.add(name.split(":", 1)[1])
    return granted


def _is_dag_resource(name: str) -> bool:
    return name.startswith(DAG_RESOURCE_PREFIXES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m include.orchestration.access",
        description="Per-team access to segments (FAB auth manager).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("sync", help="create the YAMLs' roles and sync DAG permissions")
    run.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    report = sync()
    if args.json:
        print(json.dumps(asdict(report)))
    else:
        print(
            f"access sync: {report.segments_with_access} segment(s) with `access`, "
            f"{report.dags_synced} DAG(s) synced; roles created: "
            f"{', '.join(report.roles_created) or 'none'}; roles reset to the team "
            f"permissions: {', '.join(report.roles_reset) or 'none'}"
        )
    for error in report.invalid:
        print(f"not synced: {error}", file=sys.stderr)
    return 1 if report.invalid else 0


if __name__ == "__main__":
    raise SystemExit(main())
