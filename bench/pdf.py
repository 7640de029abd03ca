"""Benchmark: letters/s of one ``write_pdf()`` per letter against the erpmail pipeline.

Same run, same letters (dunning letters in de/en/nl, 1 to 8 items, some multi-page):
  naive     one WeasyPrint document and write_pdf() per letter, one process
  batch     erpmail.pdf.render_batch in chunks, one process (one mapped task, no parallelism)
  pool      erpmail.pdf.render_many: a process pool over every core inside one task
  mapped    the same chunks in separate cold-started processes, one per core, as mapped
            task instances would run them (imports and font setup paid per process)

    .venv/bin/python bench/pdf.py [--letters 300] [--chunk 50]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins"))

from erpmail import pdf  # noqa: E402
from erpmail.seed import TEXTS  # noqa: E402
from erpmail.templates import (  # noqa: E402
    Company,
    LetterContext,
    LetterItem,
    LetterTexts,
    Partner,
    Templates,
)

NAMES = [
    "Müller Bau GmbH",
    "Größer & Söhne OHG",
    "Smith Logistics Ltd",
    "Van der Berg B.V.",
    "Schäfer Druckerei AG",
    "Jansen Techniek B.V.",
    "O'Neill Engineering plc",
]


def letters(count: int, seed: int = 1) -> list[pdf.LetterSource]:
    """``count`` deterministic dunning letters as HTML."""
    rng = random.Random(seed)
    templates = Templates()
    company = Company(
        "DEMO",
        "Muster Handels GmbH",
        "Friedrichstraße 100",
        "10117",
        "Berlin",
        "DE",
        "buchhaltung@muster-handels.example.com",
        "+49 30 1234567",
        "DE02120300000000202051",
    )
    key_date = date(2024, 6, 28)
    out = []
    for n in range(count):
        language = rng.choice(["de", "de", "en", "nl", None])
        partner = Partner(
            n + 1,
            f"{n + 1:06d}",
            rng.choice(NAMES),
            "Hauptstraße 1",
            "10115",
            "Berlin",
            "DE",
            None,
            language,
        )
        items = []
        for i in range(rng.choice([1, 2, 3, 4, 5, 8, 8, 30]) if n % 25 == 0 else rng.randint(1, 8)):
            due = key_date - timedelta(days=rng.randint(8, 90))
            amount = Decimal(rng.randint(4000, 480000)) / 100
            items.append(
                LetterItem(
                    f"RE{partner.number}-{i + 1:03d}",
                    "invoice",
                    due - timedelta(days=30),
                    due,
                    amount,
                    amount,
                    "CHF" if rng.random() < 0.05 else "EUR",
                    (key_date - due).days,
                    rng.randint(1, 3),
                )
            )
        level = max(item.level for item in items)
        subject, intro, closing = TEXTS[language or "de"][level - 1]
        context = LetterContext(
            "dunning",
            company,
            partner,
            key_date,
            items,
            LetterTexts(subject, intro, closing),
            f"B1-{partner.number}",
            level=level,
            fee=Decimal("5.00") * (level - 1),
        )
        out.append(pdf.LetterSource(partner.number, templates.render_letter(context).letter_html))
    return out


def _mapped_worker(path: str, chunk: int) -> None:
    """One cold process rendering its share in chunks, like one mapped task instance."""
    sources = [pdf.LetterSource(**item) for item in json.loads(Path(path).read_text())]
    for start in range(0, len(sources), chunk):
        assert all(r.ok for r in pdf.render_batch(sources[start : start + chunk]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--letters", type=int, default=300)
    parser.add_argument("--chunk", type=int, default=50)
    parser.add_argument("--mapped-worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mapped_worker:
        _mapped_worker(args.mapped_worker[0], int(args.mapped_worker[1]))
        return

    sources = letters(args.letters)
    workers = pdf.cores()
    pdf.render_batch(sources[:2])  # warm the font configuration for both in-process runs
    print(f"{len(sources)} letters, {workers} core(s), chunk {args.chunk}", flush=True)

    def report(name: str, seconds: float, baseline: float | None) -> float:
        rate = len(sources) / seconds
        ratio = f"  {rate / baseline:5.2f}x naive" if baseline else ""
        print(
            f"{name:7s} {seconds:7.1f} s  {1000 * seconds / len(sources):6.1f} ms/letter  "
            f"{rate:6.2f} letters/s{ratio}",
            flush=True,
        )
        return rate

    started = time.perf_counter()
    pages = sum(len(pdf.render_single(s.html)) > 0 for s in sources)
    naive = report("naive", time.perf_counter() - started, None)
    assert pages == len(sources)

    started = time.perf_counter()
    done = []
    for start in range(0, len(sources), args.chunk):
        done += pdf.render_batch(sources[start : start + args.chunk])
    report("batch", time.perf_counter() - started, naive)
    assert all(r.ok for r in done)

    started = time.perf_counter()
    pooled = pdf.render_many(sources, workers=workers, chunk_size=args.chunk)
    pool = report("pool", time.perf_counter() - started, naive)
    assert all(r.ok for r in pooled)
    assert [r.pages for r in pooled] == [r.pages for r in done]

    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for number in range(workers):
            share = sources[number::workers]
            path = Path(tmp) / f"share{number}.json"
            path.write_text(json.dumps([{"key": s.key, "html": s.html} for s in share]))
            paths.append(path)
        started = time.perf_counter()
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--mapped-worker", str(p), str(args.chunk)],
                env={**os.environ, "PYTHONPATH": str(ROOT / "plugins")},
            )
            for p in paths
        ]
        assert all(p.wait() == 0 for p in procs)
        mapped = report("mapped", time.perf_counter() - started, naive)
    print(f"pipeline (pool) / naive = {pool / naive:.2f}x; mapped / naive = {mapped / naive:.2f}x")


if __name__ == "__main__":
    main()
