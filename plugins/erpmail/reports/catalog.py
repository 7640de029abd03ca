"""The reports shipped in ``sql/reports/<name>.sql``: each declares its title
(``-- title: ...``), its parameters (``-- param: <name> <type>``; ``company`` is always
bound) and its columns in order (``-- column: <name> <type> <label>``; types text, int,
date, timestamp, money, number)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Any

from erpmail.core import clock, db

REPORTS = db.SQL_DIR / "reports"
TITLE = re.compile(r"^--\s*title:\s*(.+?)\s*$", re.M)
PARAM = re.compile(r"^--\s*param:\s*([a-z_][a-z0-9_]*)\s+(text|int|date)\s*$", re.M)
COLUMN = re.compile(
    r"^--\s*column:\s*([a-z_][a-z0-9_]*)\s+(text|int|date|timestamp|money|number)\s+(.+?)\s*$",
    re.M,
)
COERCE = {
    "text": str,
    "int": int,
    # "today": the day the report runs, on the default business clock
    "date": lambda v: clock.today() if v == "today" else date.fromisoformat(v),
}


@dataclass(frozen=True)
class Column:
    """One declared column."""

    name: str
    type: str
    label: str


@dataclass(frozen=True)
class Report:
    """A report's query and what it declares."""

    name: str
    title: str
    sql: str
    params: dict[str, str]
    columns: tuple[Column, ...]


def report(name: str) -> Report:
    """The report ``name``; a LookupError naming it and the known ones when missing."""
    path = REPORTS / f"{name}.sql"
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name or "") or not path.is_file():
        known = ", ".join(sorted(p.stem for p in REPORTS.glob("*.sql")))
        raise LookupError(f"report {name!r} not in {REPORTS} (known: {known})")
    sql = path.read_text(encoding="utf-8")
    title = TITLE.search(sql)
    columns = tuple(Column(*found) for found in COLUMN.findall(sql))
    if not columns:
        raise LookupError(f"report {name}: no '-- column:' lines in {path}")
    return Report(name, title.group(1) if title else name, sql, dict(PARAM.findall(sql)), columns)


def bound(found: Report, subscription: str, given: dict[str, Any], company: str) -> dict:
    """The query's parameters from ``given``: a ValueError naming the subscription and the
    parameter when one is missing, unknown or of the wrong type."""
    if unknown := sorted(set(given) - set(found.params)):
        raise ValueError(
            f"subscription {subscription}: report {found.name} has no parameter {unknown[0]!r}"
        )
    values: dict[str, Any] = {"company": company}
    for name, kind in found.params.items():
        if name not in given:
            raise ValueError(f"subscription {subscription}: report {found.name} needs {name!r}")
        try:
            values[name] = COERCE[kind](given[name])
        except (TypeError, ValueError):
            raise ValueError(
                f"subscription {subscription}: parameter {name!r} is no {kind}: {given[name]!r}"
            ) from None
    return values
