"""`include/` is a stack of layers: a module imports from its own layer and those below, never
from one above (docs/decisions.md, "Layout: where things go"). Read from the source with
`ast`, nothing imported: every import counts, at module level, inside a function or under
`if TYPE_CHECKING:`, absolute or relative."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Lowest first; the names of one entry are one layer and may import each other. `include/cli.py`
# is "cli", `include/staging.py` "staging"; every other name is a folder of include/.
LAYERS = (
    "clients",
    "config",
    "connectors staging",
    "matching",
    "validation",
    "store",
    "campaign webhooks",
    "orchestration",
    "ui cli",
)
# Above every layer, free to import any: the demo's runners and fakes (like dags/ and plugins/,
# which are outside include/ and not checked).
TOP = "demo"
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names.split()}
RANK[TOP] = len(LAYERS)


def imports(path: Path, package: str) -> Iterator[tuple[int, str]]:
    """(line, module) of every import in the file, relative ones resolved from `package` (the
    dotted package the file is in): of `from include.x import a, b` the module include.x, of
    `from include import cli` the module include.cli."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: the package, one level up per dot after the first
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            if base == "include":
                for alias in node.names:
                    yield node.lineno, f"{base}.{alias.name}"
            else:
                yield node.lineno, base


def layer_of(module: str) -> str | None:
    """The layer name of an `include.<name>...` module; None for anything else."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "include" else None


def layer_problems(root: Path) -> list[str]:
    """Every module of `root`/include that imports from a layer above its own, and every
    folder or module of include/ that is in no layer, one line each."""
    problems, unplaced = [], set()
    for path in sorted((root / "include").rglob("*.py")):
        relative = path.relative_to(root)
        name = relative.parts[1].removesuffix(".py")
        if name == "__init__":
            continue
        if name not in RANK:
            unplaced.add(Path(*relative.parts[:2]).as_posix())
            continue
        package = ".".join(relative.parent.parts)
        for line, module in sorted(imports(path, package)):
            target = layer_of(module)
            if target in RANK and RANK[target] > RANK[name]:
                problems.append(
                    f"{relative.as_posix()}:{line} imports {module} "
                    f"(layer {target} is above {name})"
                )
    return [f"{place} is in no layer: add it to LAYERS" for place in sorted(unplaced)] + problems


def test_include_imports_only_from_its_own_layer_or_below():
    problems = layer_problems(ROOT)
    assert not problems, "\n".join(problems)


def test_the_check_reports_an_upward_import_and_an_unplaced_folder(tmp_path: Path):
    """On a small tree: each upward import (lazy, relative, TYPE_CHECKING alike) and a new
    folder are reported, exactly; imports from below, from the same layer and into the demo's
    runners are not."""
    files = {
        "include/__init__.py": "",
        "include/cli.py": "from include.store import views\n",
        "include/clients/http.py": "import json\n",
        "include/store/__init__.py": "",
        "include/store/tables.py": "",
        "include/store/views.py": (
            "from typing import TYPE_CHECKING\n"
            "from include.clients import http\n"
            "from . import tables\n"
            "if TYPE_CHECKING:\n"
            "    from include.orchestration.dag_state import DagState\n"
            "def lazy():\n"
            "    from .. import cli\n"
            "    from ..campaign.report import send_report\n"
        ),
        "include/campaign/report.py": "from include.webhooks import state\n",
        "include/webhooks/state.py": "from include.campaign import report\n",
        "include/orchestration/dag_state.py": "from include.store.views import DagState\n",
        "include/demo/seed.py": "from include import cli\nimport include.ui.app\n",
        "include/reports/__init__.py": "",
        "include/segments/a.yaml": "id: a\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)

    assert layer_problems(tmp_path) == [
        "include/reports is in no layer: add it to LAYERS",
        "include/store/views.py:5 imports include.orchestration.dag_state "
        "(layer orchestration is above store)",
        "include/store/views.py:7 imports include.cli (layer cli is above store)",
        "include/store/views.py:8 imports include.campaign.report (layer campaign is above store)",
    ]
