"""Benchmark: letters/s of one ``write_pdf()`` per letter against the erpmail render path.

Same run, same letters (dunning letters in de/en/nl, 1 to 8 items, some multi-page); naive
and batch take turns chunk by chunk in one process, so both see the same machine load:
  naive   erpmail.documents.pdf.render_single: one WeasyPrint document and write_pdf() per letter, its
          own font configuration and stylesheet parse each time, one process
  batch   erpmail.documents.pdf.render_batch, one process: what ONE render task gets per worker slot
          (font configuration and parsed letter.css shared by every letter of the process)
  mapped  mapped render tasks on 2 worker slots: one cold-started process per core, each
          rendering its share with render_batch (interpreter start, imports and font setup
          included), as the dunning run's mapped render tasks run them
Per letter it prints the phases of the batch path (layout, write; no split: each letter is
written on its own), the former path for comparison (one write_pdf() per chunk, split per
letter with pypdf) and the average PDF size of naive, batch and the former split letters.

    .venv/bin/python bench/pdf.py [--letters 300] [--chunk 50]
"""

from __future__ import annotations

import argparse
import io
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

import pypdf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins"))

from erpmail.documents import pdf  # noqa: E402
from erpmail.documents.templates import (  # noqa: E402
    Company,
    LetterContext,
    LetterItem,
    LetterTexts,
    Partner,
    Templates,
)
from erpmail.seed import TEXTS  # noqa: E402

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
    """One cold process rendering its share, like one mapped render task."""
    sources = [pdf.LetterSource(**item) for item in json.loads(Path(path).read_text())]
    for start in range(0, len(sources), chunk):
        assert all(r.ok for r in pdf.render_batch(sources[start : start + chunk]))


def phases(sources: list[pdf.LetterSource], chunk: int) -> dict[str, float]:
    """Seconds spent laying out and writing, the current path and the former one, plus bytes."""
    out = dict.fromkeys(["layout", "write", "combined", "split", "split_bytes"], 0.0)
    fetcher = pdf.TemplateFetcher()
    for start in range(0, len(sources), chunk):
        started = time.perf_counter()
        docs = [pdf.lay_out(s, fetcher) for s in sources[start : start + chunk]]
        laid_out = time.perf_counter()
        for doc in docs:
            doc.write_pdf()
        written = time.perf_counter()
        combined = docs[0].copy([page for doc in docs for page in doc.pages]).write_pdf()
        combined_at = time.perf_counter()
        reader = pypdf.PdfReader(io.BytesIO(combined))
        first = 0
        for doc in docs:
            writer = pypdf.PdfWriter()
            for number in range(first, first + len(doc.pages)):
                writer.add_page(reader.pages[number])
            first += len(doc.pages)
            data = io.BytesIO()
            writer.write(data)
            out["split_bytes"] += len(data.getvalue())
        split_at = time.perf_counter()
        out["layout"] += laid_out - started
        out["write"] += written - laid_out
        out["combined"] += combined_at - written
        out["split"] += split_at - combined_at
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--letters", type=int, default=300)
    parser.add_argument("--chunk", type=int, default=50, help="letters per render_batch call")
    parser.add_argument("--slots", type=int, default=2, help="worker slots of the mapped figure")
    parser.add_argument("--mapped-worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mapped_worker:
        _mapped_worker(args.mapped_worker[0], int(args.mapped_worker[1]))
        return

    sources = letters(args.letters)
    n = len(sources)
    print(
        f"{n} letters, chunk {args.chunk}, {os.cpu_count()} core(s), "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        flush=True,
    )

    def report(name: str, seconds: float, baseline: float | None) -> float:
        rate = n / seconds
        ratio = f"  {rate / baseline:5.2f}x naive" if baseline else ""
        print(
            f"{name:7s} {seconds:7.1f} s  {1000 * seconds / n:6.1f} ms/letter  "
            f"{rate:6.2f} letters/s{ratio}",
            flush=True,
        )
        return rate

    # naive and batch take turns chunk by chunk, so a change in the machine's load hits both
    pdf.render_batch(sources[:1])  # the process's shared fonts and stylesheet, made once
    naive_s = batch_s = 0.0
    naive_pdfs, done = [], []
    for start in range(0, n, args.chunk):
        chunk = sources[start : start + args.chunk]
        started = time.perf_counter()
        naive_pdfs += [pdf.render_single(s.html) for s in chunk]
        naive_s += time.perf_counter() - started
        started = time.perf_counter()
        done += pdf.render_batch(chunk)
        batch_s += time.perf_counter() - started
    naive = report("naive", naive_s, None)
    batch = report("batch", batch_s, naive)
    assert all(r.ok for r in done)
    pages = [len(pypdf.PdfReader(io.BytesIO(p)).pages) for p in naive_pdfs]
    assert [r.pages for r in done] == pages

    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for number in range(args.slots):
            path = Path(tmp) / f"share{number}.json"
            share = sources[number :: args.slots]
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

    times = phases(sources, args.chunk)
    ms = {key: 1000 * value / n for key, value in times.items()}
    print(
        f"batch phases per letter: layout {ms['layout']:.1f} ms, write {ms['write']:.1f} ms, "
        "split none (each letter written on its own)"
    )
    print(
        f"former path per letter:  layout the same, one write per chunk {ms['combined']:.1f} ms, "
        f"pypdf split {ms['split']:.1f} ms"
    )
    kb = 1024 * n
    print(
        f"size per letter: naive {sum(map(len, naive_pdfs)) / kb:.1f} KB, "
        f"batch {sum(len(r.pdf) for r in done) / kb:.1f} KB, "
        f"former split {times['split_bytes'] / kb:.1f} KB"
    )
    print(
        f"batch / naive = {batch / naive:.2f}x (target >= 3); "
        f"mapped on {args.slots} slots / naive = {mapped / naive:.2f}x (target >= 5)"
    )


if __name__ == "__main__":
    main()
