"""Per-team access to segments under FAB's auth manager: a segment's `access` (role → read |
act) becomes its DAG's `access_control`, and `sync` makes the roles it names.

    python -m include.orchestration.access sync [--json]

`sync` (idempotent; compose's init runs it, and it must run after a YAML adds a role): every
role named in any segment's `access` exists and holds exactly TEAM_ROLE_PERMISSIONS (what a
user needs to open the Connector Segments page and read task logs, nothing of Connections,
Variables, Pools or other DAGs) plus the DAG permissions the YAMLs grant it; each segment's DAG
permissions are set from its YAML (a segment without `access` grants no team role anything).
Built-in roles (Admin, Op, User, Viewer) keep their global permissions and are never touched.

Airflow's DAG processor syncs a DAG's `access_control` too whenever it writes the DAG, but a
role that does not exist fails the write with an import error on the whole shard file, which
marks every DAG of the shard stale: one YAML naming a new team would break 1/16 of the
segments until someone ran the sync. So the sync records the roles it made in the Variable
ROLES_VARIABLE (`synced_roles`), and under FAB a DAG whose `access` names a role not synced
yet gets no `access_control`: the DAG processor then leaves its permissions as the last sync
set them, the new team sees the segment after the next sync, and nothing else changes.
Under SimpleAuthManager (the embedded default) `access` has no effect: its roles are global,
and no Variable is read.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Container, Iterable
from dataclasses import asdict, dataclass, field

from include.config.segments import SegmentConfig, dag_id_of, load_segments

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
SEGMENT_DAG_PREFIXES = tuple(f"{prefix}{dag_id_of('')}" for prefix in DAG_RESOURCE_PREFIXES)
log = logging.getLogger(__name__)
ROLES_VARIABLE = "connector_segments_team_roles"  # JSON list of the roles the sync made


def access_control(
    config: SegmentConfig, synced: Container[str] | None = None
) -> dict[str, dict[str, set[str]]] | None:
    """The DAG's `access_control` for the segment's `access`; None (Airflow's default: the
    DAG processor changes no permission) without `access`, or when `synced` is given and
    lacks one of its roles (see the module's doc)."""
    if config.access is None or (synced is not None and not set(config.access) <= set(synced)):
        return None
    return {
        role: {resource: set(actions) for resource, actions in LEVELS[level].items()}
        for role, level in config.access.items()
    }


def synced_roles() -> frozenset[str] | None:
    """Under FAB's auth manager, the team roles the last sync made (none before the first);
    None under any other auth manager, where `access_control` is never read. One Variable
    read, once per shard file parsed."""
    if not _under_fab():
        return None
    # airflow.models' Variable, not the SDK's: in the DAG processor it asks the SDK's (through
    # the supervisor) and warns; in a plain process (`airflow dags reserialize`) it reads the
    # metadata DB, which the SDK's would not.
    from airflow.models import Variable

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return frozenset(json.loads(Variable.get(ROLES_VARIABLE, default_var="[]")))
    except Exception as exc:  # a DAG file must load whatever the Variable holds
        log.warning(
            "Variable %s unreadable (%s): segment DAGs keep their permissions until the next "
            "`python -m include.orchestration.access sync`",
            ROLES_VARIABLE,
            exc,
        )
        return frozenset()


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
        roles = team_roles(loaded.segments)
        for name in roles:
            _make_team_role(manager, name, report)
        manager.session.commit()
        _record_synced_roles(roles)
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
    """The role exists with exactly TEAM_ROLE_PERMISSIONS besides its segment DAGs'
    permissions (which the DAG sync then sets from the YAMLs): nothing on other DAGs."""
    role = manager.find_role(name)
    if role is None:
        role = manager.add_role(name)
        report.roles_created.append(name)
    dag_permissions = [
        p for p in role.permissions if p.resource.name.startswith(SEGMENT_DAG_PREFIXES)
    ]
    others = {(p.action.name, p.resource.name) for p in role.permissions} - {
        (p.action.name, p.resource.name) for p in dag_permissions
    }
    if others != TEAM_ROLE_PERMISSIONS:
        if name not in report.roles_created:
            report.roles_reset.append(name)
        wanted = [manager.create_permission(*pair) for pair in sorted(TEAM_ROLE_PERMISSIONS)]
        role.permissions = dag_permissions + wanted


def _under_fab() -> bool:
    from airflow.configuration import conf

    return "FabAuthManager" in conf.get("core", "auth_manager", fallback="")


def _record_synced_roles(roles: list[str]) -> None:
    from airflow.models import Variable

    description = "Team roles made by `python -m include.orchestration.access sync`: do not edit"
    Variable.set(ROLES_VARIABLE, json.dumps(roles), description=description)


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
    if not _under_fab():
        print(
            "access sync: Airflow's auth manager is not FAB's ([core] auth_manager); `access` "
            "applies under FAB only, so there is nothing to sync",
            file=sys.stderr,
        )
        return 1
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
