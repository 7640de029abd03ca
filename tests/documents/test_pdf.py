"""Batch PDF rendering and splitting, on letters built from the seeded partners and items."""

from __future__ import annotations

import io
import multiprocessing
import re
import threading
from dataclasses import replace
from datetime import date, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pypdf
import pytest

from erpmail.documents import pdf
from erpmail.documents.templates import LetterContext, Templates
from tests.lettercontexts import load_contexts
from tests.pdftext import pdf_text


def sources(
    contexts: list[LetterContext], templates: Templates | None = None
) -> list[pdf.LetterSource]:
    templates = templates or Templates()
    return [
        pdf.LetterSource(c.partner.number, templates.render_letter(c).letter_html) for c in contexts
    ]


def money_text(context: LetterContext, amount: Decimal, currency: str) -> str:
    return (
        Templates()
        .env.from_string("{{ a|money(c) }}")
        .render(a=amount, c=currency, language=context.partner.language or "de")
        .replace("\xa0", " ")
    )


# --- tests


def test_each_split_pdf_holds_its_own_partner_and_no_other(seeded_db):
    contexts = load_contexts(seeded_db, limit=12)
    assert len({c.partner.language for c in contexts}) >= 3  # a mix of de/en/nl/none
    results = pdf.render_batch(sources(contexts))

    assert [r.key for r in results] == [c.partner.number for c in contexts]
    for context, result in zip(contexts, results, strict=True):
        assert result.ok, result.error
        text = pdf_text(result.pdf)
        assert re.search(rf"\b{context.partner.number}\b", text)
        for item in context.items:
            assert item.doc_number in text
        for currency, total in context.totals.items():
            assert money_text(context, total, currency) in text
        for other in contexts:
            if other is context:
                continue
            assert not re.search(rf"\b{other.partner.number}\b", text), other.partner.number
            assert not any(item.doc_number in text for item in other.items)


def test_a_forty_item_letter_is_one_three_page_pdf(seeded_db):
    first, second, third = load_contexts(seeded_db, limit=3)
    template = second.items[0]
    many = [
        replace(
            template, doc_number=f"RE{second.partner.number}-L{n:03d}", open_amount=Decimal("10.00")
        )
        for n in range(40)
    ]
    long_letter = replace(second, items=many)
    results = pdf.render_batch(sources([first, long_letter, third]))

    assert [r.pages for r in results] == [1, 3, 1]
    reader = pypdf.PdfReader(io.BytesIO(results[1].pdf))
    assert len(reader.pages) == 3
    text = pdf_text(results[1].pdf)
    assert all(item.doc_number in text for item in many)
    assert first.partner.number not in text and third.partner.number not in text
    page_of = {"de": "Seite {} von 3", "en": "Page {} of 3", "nl": "Pagina {} van 3"}
    words = page_of[second.partner.language or "de"]
    for number, page in enumerate(reader.pages, start=1):
        assert words.format(number) in page.extract_text()
    for neighbour, result in ((first, results[0]), (third, results[2])):
        assert re.search(rf"\b{neighbour.partner.number}\b", pdf_text(result.pdf))


def test_umlauts_euro_metadata_and_embedded_fonts(seeded_db):
    context = next(
        c
        for c in load_contexts(seeded_db)
        if c.partner.language == "de" and re.search("[äöüß]", c.partner.name)
    )
    context = replace(context, company=replace(context.company, name="Müller & Größe GmbH"))
    (result,) = pdf.render_batch(sources([context]))
    text = pdf_text(result.pdf)
    assert context.partner.name in text
    assert (
        "€" in text and "Müller & Größe GmbH" in text and "Mahngebühr" in text or context.fee == 0
    )

    reader = pypdf.PdfReader(io.BytesIO(result.pdf))
    meta = reader.metadata
    assert meta.title == f"{context.texts.subject} {context.reference}"
    assert meta.author == "Müller & Größe GmbH"
    assert context.partner.name in meta.subject
    assert meta.creation_date is not None
    fonts = []
    for page in reader.pages:
        for font in page["/Resources"]["/Font"].values():
            font = font.get_object()
            descendant = (
                font["/DescendantFonts"][0].get_object() if "/DescendantFonts" in font else font
            )
            fonts.append(descendant["/FontDescriptor"].get_object())
    assert fonts and all("/FontFile2" in f or "/FontFile3" in f or "/FontFile" in f for f in fonts)


def test_pdf_a3b_variant_carries_output_intent_and_xmp(seeded_db):
    (context,) = load_contexts(seeded_db, limit=1)
    (result,) = pdf.render_batch(sources([context]), pdf_variant="pdf/a-3b")
    reader = pypdf.PdfReader(io.BytesIO(result.pdf))
    root = reader.trailer["/Root"]
    assert "/OutputIntents" in root
    xmp = root["/Metadata"].get_object().get_data()
    assert b'pdfaid:part="3"' in xmp and b'pdfaid:conformance="B"' in xmp
    assert context.reference.encode() in xmp
    assert reader.trailer["/ID"][0]  # a file identifier, as PDF/A requires
    assert reader.metadata["/Producer"].encode() in xmp  # info and XMP agree
    with pytest.raises(ValueError, match="pdf_variant"):
        pdf.render_batch(sources([context]), pdf_variant="pdf/x-9")


def test_created_date_from_the_letter_context(seeded_db):
    from datetime import datetime
    from zoneinfo import ZoneInfo

    (context,) = load_contexts(seeded_db, limit=1)
    created = datetime(2024, 3, 5, 9, 30, tzinfo=ZoneInfo("Europe/Berlin"))
    (result,) = pdf.render_batch(sources([replace(context, created=created)]))
    meta = pypdf.PdfReader(io.BytesIO(result.pdf)).metadata
    assert meta.creation_date == created


@pytest.fixture
def counting_http_server():
    """A local HTTP server on 127.0.0.1 that counts every request it gets."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "text/css")
            self.end_headers()
            self.wfile.write(b"body { color: red }")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()
    server.server_close()


def test_fetcher_serves_nothing_outside_the_templates(seeded_db, counting_http_server, tmp_path):
    host, hits = counting_http_server
    (context,) = load_contexts(seeded_db, limit=1)
    good = sources([context])[0]
    secret = tmp_path / "secret.css"
    secret.write_text("body { color: red }")

    def letter(key: str, head: str) -> pdf.LetterSource:
        return pdf.LetterSource(key, good.html.replace("</head>", f"{head}</head>"))

    bad = [
        letter("http-css", f'<link rel="stylesheet" href="http://{host}/x.css">'),
        letter("https-img", f'<img src="https://{host}/x.png">'),
        letter("http-import", f'<style>@import url("http://{host}/i.css");</style>'),
        letter("http-bg", f'<style>body {{ background: url("http://{host}/bg.png") }}</style>'),
        letter("passwd", '<link rel="stylesheet" href="file:///etc/passwd">'),
        letter("outside", f'<link rel="stylesheet" href="{secret.as_uri()}">'),
        letter("dotdot", '<link rel="stylesheet" href="../../../../../../etc/passwd">'),
        letter("dotdot-img", '<img src="letter/../../../../../../etc/hostname">'),
    ]
    results = pdf.render_batch([good, *bad])

    assert hits == []
    assert results[0].ok and results[0].pages == 1
    for source, result in zip(bad, results[1:], strict=True):
        assert not result.ok, source.key
        assert result.pdf is None
        assert result.error.startswith(f"letter {source.key}:")
        assert "refused" in result.error
    # the good letter's PDF holds nothing fetched from outside
    assert "root:" not in pdf_text(results[0].pdf)


def test_fetcher_directly():
    fetcher = pdf.TemplateFetcher()
    css = fetcher.fetch(pdf.base_url() + "letter/letter.css")
    assert b"@page" in css.read()
    for url in (
        "file:///etc/passwd",
        pdf.base_url() + "../../../etc/passwd",
        "file://example.com/etc/passwd",
        "http://127.0.0.1:9/x",
        "ftp://127.0.0.1/x",
    ):
        with pytest.raises(pdf.ResourceRefused):
            fetcher.fetch(url)
    assert len(fetcher.refused) == 5


def test_render_batch_renders_in_this_process_in_order_and_fails_alone(seeded_db):
    contexts = load_contexts(seeded_db, limit=7)
    letters = sources(contexts)
    letters[3] = pdf.LetterSource(
        letters[3].key,
        letters[3].html.replace(
            "</head>", '<link rel="stylesheet" href="http://127.0.0.1:9/x.css"></head>'
        ),
    )
    letters[5] = pdf.LetterSource(letters[5].key, letters[5].html.replace(pdf.LETTER_CSS_LINK, ""))
    # a forbidden attachment is fetched only when the PDF is written: it fails that letter alone
    letters[1] = pdf.LetterSource(
        letters[1].key,
        letters[1].html.replace(
            "</body>", '<a rel="attachment" href="file:///etc/passwd">x</a></body>'
        ),
    )
    children = multiprocessing.active_children()
    results = pdf.render_batch(letters)

    assert multiprocessing.active_children() == children  # no process started
    assert [r.key for r in results] == [c.partner.number for c in contexts]
    assert [r.ok for r in results] == [True, False, True, False, True, True, True]
    assert "refused" in results[3].error and "/etc/passwd" in results[1].error
    for context, result in zip(contexts, results, strict=True):
        if result.ok:
            assert re.search(rf"\b{context.partner.number}\b", pdf_text(result.pdf))
    # a letter without the shared stylesheet is laid out without it (A4 without its margins)
    assert pdf_text(results[5].pdf) != pdf_text(pdf.render_batch(sources([contexts[5]]))[0].pdf)


def page_texts(data: bytes) -> list[str]:
    return [page.extract_text() for page in pypdf.PdfReader(io.BytesIO(data)).pages]


def test_batch_letters_read_as_the_naive_ones_page_by_page(seeded_db):
    contexts = load_contexts(seeded_db)
    by_language = {}
    for context in contexts:
        by_language.setdefault(context.partner.language, context)
    assert {"de", "en", "nl"} <= set(by_language)
    chosen = [
        by_language[language] for language in ("de", "en", "nl", None) if language in by_language
    ]
    long = by_language["en"]
    many = [
        replace(long.items[0], doc_number=f"RE{long.partner.number}-L{n:03d}") for n in range(40)
    ]
    chosen.append(replace(long, items=many))
    ledger = {
        "EUR": {
            "receivable": Decimal("120.00"),
            "payable": Decimal("0.00"),
            "balance": Decimal("120.00"),
        }
    }
    balance = replace(
        by_language["de"],
        document="balance_confirmation",
        texts=None,
        level=None,
        fee=Decimal("0.00"),
        extra={
            "ledger": ledger,
            "balance": {"EUR": Decimal("120.00")},
            "sides": [],
            "reply_address": "buchhaltung@example.com",
            "link": "relnr 1",
            "letter_id": 1,
        },
    )
    chosen.append(balance)
    letters = sources(chosen)
    results = pdf.render_batch(letters)

    assert all(r.ok for r in results), [r.error for r in results]
    assert [r.pages for r in results][-2:] == [3, 2]  # the long letter, the reply form's page
    for letter, result in zip(letters, results, strict=True):
        naive = pdf.render_single(letter.html)
        assert page_texts(result.pdf) == page_texts(naive), letter.key
        assert result.pages == len(pypdf.PdfReader(io.BytesIO(naive)).pages)


def test_loader_levels_follow_days_overdue(seeded_db):
    # the loader is test-side, but the letters above rely on it: keep it honest
    contexts = load_contexts(seeded_db, limit=20, key_date=date.today())
    for context in contexts:
        for item in context.items:
            overdue = (date.today() - item.due_date).days
            assert item.level is None or overdue >= {1: 7, 2: 21, 3: 35}[item.level]
            assert item.due_date <= date.today() + timedelta(days=30)


def test_progress_is_logged(seeded_db, monkeypatch, caplog):
    monkeypatch.setattr(pdf, "PROGRESS_SECONDS", 0.0)
    caplog.set_level("INFO", logger="erpmail.documents.pdf")
    results = pdf.render_batch(sources(load_contexts(seeded_db, limit=3)))
    assert all(r.ok for r in results)
    messages = [r.getMessage() for r in caplog.records if r.name == "erpmail.documents.pdf"]
    assert any(m.startswith("rendered: 1/3 letters") for m in messages)
    assert any(m.startswith("rendered: 2/3 letters") for m in messages)
    assert messages[-1].startswith("rendered 3 letters (0 failed)")
