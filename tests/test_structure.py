"""The package's shape: imports point one way, modules stay small, each subpackage says what
it owns. Read from the source with ``ast``; nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "plugins" / "erpmail"
FLOWS = ("documents", "outbound", "inbound", "retention", "events", "campaigns", "reports")
# what each part may import of erpmail (besides itself)
ALLOWED = {
    "__init__": set(),
    "core": set(),
    "documents": {"core", "outbound"},
    "outbound": {"core", "inbound"},  # the IMAP hook, for the Sent folder
    "inbound": {"core", "documents", "outbound", "campaigns"},  # the mailto unsubscribe
    "retention": {"core"},
    "events": {"core", "documents", "outbound"},  # templates and MIME; accounts and outbox
    "campaigns": {"core", "documents", "outbound"},
    "reports": {"core", "documents", "outbound"},
    "operators": {"core", *FLOWS},
    "ui": {"core", *FLOWS, "operators"},
    # the command line, the demo data and the demo sit on top of everything
    "cli": {"core", *FLOWS, "seed", "demo"},
    "seed": {"core", *FLOWS},
    "demo": {"core", *FLOWS, "seed", "operators"},
    "provider": {"core"},  # the provider info Airflow reads: names hooks as strings only
}
MAX_LINES = 500


def _part(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, erpmail module, names) of every ``import``/``from`` of erpmail in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "erpmail" or node.module.startswith("erpmail."):
                found.append((node.lineno, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("erpmail."):
                    found.append((node.lineno, alias.name, []))
    return found


def _targets(module: str, names: list[str]) -> list[str]:
    """The parts of erpmail an import reaches: ``from erpmail import core`` reaches core."""
    parts = module.split(".")
    if len(parts) >= 2:
        return [parts[1]]
    return names


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_one_way_and_touch_no_private_name(path):
    part = _part(path)
    allowed = ALLOWED.get(part)
    assert allowed is not None, f"{path.relative_to(PACKAGE)}: a part not in the design"
    for line, module, names in _imports(path):
        for target in _targets(module, names):
            if target in (part, "__init__"):
                continue
            assert target in allowed, f"{path.name}:{line} imports erpmail.{target} ({part})"
        if _targets(module, names)[0] != part:
            private = [n for n in names if n.startswith("_")]
            private += [p for p in module.split(".") if p.startswith("_")]
            assert not private, f"{path.name}:{line} imports private {private} of {module}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_over_the_limit(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE)} has {lines} lines"


@pytest.mark.parametrize("sub", ["core", *FLOWS, "operators"])
def test_every_subpackage_says_what_it_owns(sub):
    doc = ast.get_docstring(ast.parse((PACKAGE / sub / "__init__.py").read_text()))
    assert doc and len(doc.splitlines()) <= 4 and "mport" in doc, sub


@pytest.mark.parametrize("path", sorted((ROOT / "dags").glob("*.py")), ids=lambda p: p.name)
def test_dag_files_use_the_operators(path):
    for line, module, names in _imports(path):
        target = _targets(module, names)[0]
        assert target == "operators", f"dags/{path.name}:{line} imports erpmail.{target}"


def test_nothing_assigns_to_a_standard_library_module():
    # e.g. a module that set email.feedparser's ``re`` changed every parser in the process
    stdlib = {"email", "feedparser", "re", "smtplib", "imaplib", "ssl", "socket", "os", "sys"}
    for path in MODULES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else []
            for target in targets:
                while isinstance(target, ast.Attribute):
                    target = target.value
                    if isinstance(target, ast.Name) and target.id in stdlib:
                        raise AssertionError(f"{path.name}:{node.lineno} assigns to {target.id}")
                    if isinstance(target, ast.Attribute) and target.attr == "feedparser":
                        raise AssertionError(f"{path.name}:{node.lineno} patches email.feedparser")
