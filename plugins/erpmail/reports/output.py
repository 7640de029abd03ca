"""A report's rows streamed (a server-side cursor, ``CHUNK`` rows at a time) into a CSV
file and an HTML table whose header repeats on every PDF page; the PDF holds at most
``PDF_ROWS`` rows (the CSV all of them), so memory stays bounded by that."""

from __future__ import annotations

import csv
import html
import io
import tempfile
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from erpmail.reports.catalog import Report

CHUNK = 2000
PDF_ROWS = 20_000
STYLE = """
@page { size: A4 landscape; margin: 12mm; @bottom-right { content: counter(page) " / " counter(pages); font-size: 8pt; } }
body { font-family: sans-serif; font-size: 8pt; }
h1 { font-size: 12pt; }
table { border-collapse: collapse; width: 100%; }
thead { display: table-header-group; }
th, td { border-bottom: 0.3pt solid #999; padding: 2pt 4pt; text-align: left; }
td.n { text-align: right; }
tr { page-break-inside: avoid; }
"""


@dataclass
class Output:
    """What one run of a report produced."""

    rows: int
    csv: bytes | None
    pdf_html: str | None
    truncated: bool


def cell(value: Any, kind: str) -> str:
    """A value as the report shows it (ISO dates, two decimals for money)."""
    if value is None:
        return ""
    if kind == "money":
        return f"{Decimal(value):.2f}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def run(conn, found: Report, values: dict, *, formats: list[str], subtitle: str) -> Output:
    """Execute the report on a named (server-side) cursor and write its outputs."""
    kinds = [c.type for c in found.columns]
    spool = tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024, mode="w+", newline="")
    writer = csv.writer(spool) if "csv" in formats else None
    if writer:
        writer.writerow([c.label for c in found.columns])
    body = io.StringIO() if "pdf" in formats else None
    rows, truncated = 0, False
    with conn.cursor(name=f"report_{found.name}") as cur:
        cur.itersize = CHUNK
        cur.execute(found.sql, values)
        for row in cur:
            if len(row) != len(kinds):
                raise ValueError(
                    f"report {found.name}: the query returns {len(row)} columns, "
                    f"{len(kinds)} are declared"
                )
            texts = [cell(v, k) for v, k in zip(row, kinds, strict=True)]
            rows += 1
            if writer:
                writer.writerow(texts)
            if body is not None and rows <= PDF_ROWS:
                body.write("<tr>" + "".join(
                    f'<td{" class=n" if k in ("int", "money", "number") else ""}>{html.escape(t)}</td>'
                    for t, k in zip(texts, kinds, strict=True)) + "</tr>\n")  # fmt: skip
            truncated = truncated or rows > PDF_ROWS
    conn.rollback()  # the named cursor's transaction: read only
    spool.seek(0)
    data = spool.read().encode("utf-8") if writer else None
    page = None
    if body is not None:
        head = "".join(f"<th>{html.escape(c.label)}</th>" for c in found.columns)
        note = (
            f"<p>The first {PDF_ROWS} of {rows} rows; the CSV holds all.</p>" if truncated else ""
        )
        page = (
            f"<!DOCTYPE html><html><head><meta charset='utf-8'><style>{STYLE}</style></head><body>"
            f"<h1>{html.escape(found.title)}</h1><p>{html.escape(subtitle)}</p>{note}"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body.getvalue()}</tbody></table>"
            "</body></html>"
        )
    return Output(rows, data, page, truncated)
