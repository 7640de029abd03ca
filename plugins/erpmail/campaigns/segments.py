"""Who a campaign goes to: a named query in ``sql/segments/<name>.sql`` (its parameters
declared in ``-- param: <name> <type>`` lines, bound, never formatted in), or a filter on
customer group, language and country. Either returns partner ids with, where it names one, a
contact's id; the address is the contact's, else the partner's."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Any

from erpmail.core import db

SEGMENTS = db.SQL_DIR / "segments"
PARAM = re.compile(r"^--\s*param:\s*([a-z_][a-z0-9_]*)\s+(text|int|date|bool|text\[\])\s*$", re.M)
COERCE = {
    "text": str,
    "int": int,
    "date": date.fromisoformat,
    "bool": bool,
    "text[]": lambda v: [str(x) for x in v],
}
FILTER = """
SELECT p.id, NULL::bigint FROM erp.partners p
 WHERE p.company = %(company)s AND p.is_customer
   AND (%(groups)s::text[] IS NULL OR p.customer_group = ANY(%(groups)s))
   AND (%(languages)s::text[] IS NULL OR coalesce(p.language, %(company_language)s) = ANY(%(languages)s))
   AND (%(countries)s::text[] IS NULL OR p.country = ANY(%(countries)s))
 ORDER BY p.number"""
COMPANY_LANGUAGE = "SELECT language FROM erp.companies WHERE code = %s"


def declared(name: str) -> tuple[str, dict[str, str]]:
    """The segment's SQL and its declared parameters (name -> type); a LookupError naming a
    missing segment."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name or ""):
        raise LookupError(f"segment {name!r} is no segment name")
    path = SEGMENTS / f"{name}.sql"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SEGMENTS.glob("*.sql")))
        raise LookupError(f"segment {name!r} not in {SEGMENTS} (known: {known})")
    sql = path.read_text(encoding="utf-8")
    return sql, dict(PARAM.findall(sql))


def bound(campaign: str, name: str, given: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The segment's SQL and its parameters from ``given``, checked against the declaration:
    a ValueError naming the campaign and the parameter when one is missing, unknown or of the
    wrong type."""
    sql, params = declared(name)
    if unknown := sorted(set(given) - set(params)):
        raise ValueError(f"campaign {campaign}: segment {name} has no parameter {unknown[0]!r}")
    values: dict[str, Any] = {}
    for param, kind in params.items():
        if param not in given:
            raise ValueError(f"campaign {campaign}: segment {name} needs parameter {param!r}")
        try:
            values[param] = COERCE[kind](given[param])
        except (TypeError, ValueError):
            raise ValueError(
                f"campaign {campaign}: segment parameter {param!r} is no {kind}: {given[param]!r}"
            ) from None
    return sql, values


def members(cur, campaign: Any) -> list[tuple[int, int | None]]:
    """(partner id, contact id or None) of the campaign's segment or filter."""
    if campaign.segment:
        sql, values = bound(campaign.name, campaign.segment, campaign.segment_params)
        cur.execute(sql, {**values, "company": campaign.company})
        return [(row[0], row[1] if len(row) > 1 else None) for row in cur.fetchall()]
    cur.execute(COMPANY_LANGUAGE, (campaign.company,))
    (language,) = cur.fetchone()
    cur.execute(
        FILTER,
        {
            "company": campaign.company,
            "company_language": language,
            "groups": campaign.customer_groups,
            "languages": campaign.languages,
            "countries": campaign.countries,
        },
    )
    return cur.fetchall()


def names() -> list[str]:
    """The segments shipped in ``sql/segments``."""
    return sorted(p.stem for p in Path(SEGMENTS).glob("*.sql"))
