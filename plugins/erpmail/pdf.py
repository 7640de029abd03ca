"""Letters as PDF: many letters rendered as ONE WeasyPrint document, split per letter with pypdf.

Font subsetting dominates the cost of a PDF, so a batch is written once and cut into letters
at the bookmark each letter carries (never one page per letter: long letters stay whole).
Each letter is laid out on its own, so page numbers and failures stay per letter. Resources
are served only from ``include/templates/``: no network, no file outside it.
"""

from __future__ import annotations

import io
import logging
import mimetypes
import multiprocessing
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import pypdf
import weasyprint
from pypdf.generic import DecodedStreamObject, NameObject, TextStringObject
from weasyprint import CSS, HTML
from weasyprint.pdf.metadata import DocumentMetadata
from weasyprint.text.fonts import FontConfiguration
from weasyprint.urls import FatalURLFetchingError, URLFetcher, URLFetcherResponse

from erpmail.templates import TEMPLATES_DIR

log = logging.getLogger(__name__)

PDF_VARIANTS = (None, "pdf/a-3b")
BOOKMARK_PREFIX = "erpmail-letter "
PROGRESS_SECONDS = 5.0
# Each letter carries one top-level bookmark labelled with its index in the batch, and the
# templates' own headings carry none, so the outline of a batch is exactly its letters.
_MARKER_CSS = "h1, h2, h3, h4, h5, h6 { bookmark-level: none }"


class ResourceRefused(ValueError):
    """A template asked for a resource outside ``include/templates/`` (or on the network)."""


class LetterRenderError(Exception):
    """One letter could not be rendered; the message names the letter and the cause."""


@dataclass(frozen=True)
class LetterSource:
    """One letter to render: a key unique in the batch (e.g. the letter id) and its HTML."""

    key: str
    html: str


@dataclass(frozen=True)
class LetterPdf:
    """A rendered letter: its PDF and page count, or the error that failed it alone."""

    key: str
    pdf: bytes | None
    pages: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class TemplateFetcher(URLFetcher):
    """A WeasyPrint URL fetcher serving files under ``root`` only (and inline ``data:``).

    Anything else (http, https, ftp, file outside ``root``, ``..`` escapes, symlinks out)
    raises ``ResourceRefused``; with ``fail_on_errors`` WeasyPrint then stops that letter.
    """

    def __init__(self, root: Path = TEMPLATES_DIR):
        super().__init__(fail_on_errors=True, allowed_protocols=("file", "data"))
        self.root = Path(root).resolve()
        self.refused: list[str] = []

    def fetch(self, url: str, headers: dict | None = None) -> URLFetcherResponse:
        scheme = url.split(":", 1)[0].lower()
        if scheme == "data":
            return super().fetch(url, headers)
        parts = urlsplit(url)
        path = None
        if scheme == "file" and parts.netloc in ("", "localhost"):
            path = Path(url2pathname(parts.path)).resolve()
        if path is None or not path.is_relative_to(self.root) or not path.is_file():
            self.refused.append(url)
            raise ResourceRefused(
                f"resource {url!r} refused: only files under {self.root} are served"
            )
        mime_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return URLFetcherResponse(path.as_uri(), path.read_bytes(), {"Content-Type": mime_type})


class Progress:
    """Logs done/total, rate and time left at most every ``PROGRESS_SECONDS``."""

    def __init__(self, what: str, total: int):
        self.what, self.total = what, total
        self.started = self.last = time.monotonic()

    def step(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < PROGRESS_SECONDS:
            return
        self.last = now
        rate = done / (now - self.started) if now > self.started else 0.0
        left = (self.total - done) / rate if rate else 0.0
        log.info(
            "%s %d/%d letters, %.1f letters/s, %.0f s left", self.what, done, self.total, rate, left
        )


def base_url(root: Path = TEMPLATES_DIR) -> str:
    """The URL relative links in letters resolve against: the templates folder."""
    return Path(root).resolve().as_uri() + "/"


def render_single(
    html: str, *, root: Path = TEMPLATES_DIR, pdf_variant: str | None = None
) -> bytes:
    """One letter, one ``write_pdf()``: the naive way, kept as the benchmark's baseline."""
    fetcher = TemplateFetcher(root)
    return HTML(string=html, base_url=base_url(root), url_fetcher=fetcher).write_pdf(
        pdf_variant=pdf_variant
    )


def _pdf_date(value: str) -> str:
    """A W3C date (as WeasyPrint reads ``dcterms.created``) as a PDF date string."""
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    offset = moment.strftime("%z") or "+0000"
    return f"D:{moment:%Y%m%d%H%M%S}{offset[:3]}'{offset[3:]}'"


def _split_points(reader: pypdf.PdfReader, indexes: list[int]) -> list[int]:
    """Start page of each letter (by batch index), read from the batch's own outline."""
    starts: dict[int, int] = {}
    for entry in reader.outline:
        if isinstance(entry, list) or not str(entry.title).startswith(BOOKMARK_PREFIX):
            continue
        index = int(str(entry.title)[len(BOOKMARK_PREFIX) :])
        starts[index] = reader.get_destination_page_number(entry)
    if sorted(starts) != indexes:
        raise RuntimeError(f"batch outline names letters {sorted(starts)}, expected {indexes}")
    return [starts[i] for i in indexes]


def _letter_pdf(
    reader: pypdf.PdfReader,
    first: int,
    last: int,
    metadata: DocumentMetadata,
    pdf_variant: str | None,
) -> bytes:
    writer = pypdf.PdfWriter()
    writer.pdf_header = reader.pdf_header
    for number in range(first, last):
        writer.add_page(reader.pages[number])
    writer.generate_file_identifiers()  # PDF/A wants a file identifier; harmless otherwise
    created = metadata.created or datetime.now(UTC).isoformat(timespec="seconds")
    # the info dictionary and the XMP packet must agree (PDF/A): same producer, same date
    info = {
        "/Producer": f"WeasyPrint {weasyprint.__version__}",
        "/CreationDate": _pdf_date(created),
    }
    if metadata.title:
        info["/Title"] = metadata.title
    if metadata.authors:
        info["/Author"] = ", ".join(metadata.authors)
    if metadata.description:
        info["/Subject"] = metadata.description
    writer.add_metadata(info)
    if pdf_variant:
        # PDF/A: the output intent and an XMP packet matching this letter's info dictionary
        root = reader.trailer["/Root"]
        if "/OutputIntents" in root:
            intents = root["/OutputIntents"].clone(writer)
            writer._root_object[NameObject("/OutputIntents")] = intents
        _, version, conformance = {"pdf/a-3b": ("a", 3, "B")}[pdf_variant]
        meta = DocumentMetadata(
            title=metadata.title,
            authors=metadata.authors,
            description=metadata.description,
            created=created,
        )
        xml = meta.generate_rdf_metadata("a", version, conformance)
        packet = (
            b'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
            b'<x:xmpmeta xmlns:x="adobe:ns:meta/">' + xml + b'</x:xmpmeta>\n<?xpacket end="r"?>'
        )
        stream = DecodedStreamObject()
        stream.set_data(packet)
        stream[NameObject("/Type")] = NameObject("/Metadata")
        stream[NameObject("/Subtype")] = NameObject("/XML")
        writer._root_object[NameObject("/Metadata")] = writer._add_object(stream)
        if metadata.lang:
            writer._root_object[NameObject("/Lang")] = TextStringObject(metadata.lang)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def render_batch(
    letters: Sequence[LetterSource],
    *,
    pdf_variant: str | None = None,
    root: Path = TEMPLATES_DIR,
) -> list[LetterPdf]:
    """Render ``letters`` as one document and split it: one ``LetterPdf`` per letter, in order.

    A letter whose template is broken or asks for a refused resource fails alone (``error``);
    the others are written in one ``write_pdf()``. PDF metadata comes from each letter's
    ``<title>``, ``<meta name=author|description|dcterms.created>``.
    """
    if pdf_variant not in PDF_VARIANTS:
        raise ValueError(f"pdf_variant {pdf_variant!r} is not one of {PDF_VARIANTS}")
    fonts = FontConfiguration()
    fetcher = TemplateFetcher(root)
    url = base_url(root)
    marker = CSS(string=_MARKER_CSS, font_config=fonts)
    results: dict[int, LetterPdf] = {}
    documents = []  # (index, document)
    progress = Progress("laid out", len(letters))
    for index, letter in enumerate(letters):
        label = CSS(
            string=f'html {{ bookmark-level: 1; bookmark-label: "{BOOKMARK_PREFIX}{index}" }}',
            font_config=fonts,
        )
        try:
            document = HTML(string=letter.html, base_url=url, url_fetcher=fetcher).render(
                stylesheets=[marker, label], font_config=fonts, pdf_variant=pdf_variant
            )
        except FatalURLFetchingError as exc:  # a BaseException: WeasyPrint's way to stop
            cause = exc.__cause__ or exc
            results[index] = LetterPdf(letter.key, None, error=f"letter {letter.key}: {cause}")
            continue
        except Exception as exc:
            results[index] = LetterPdf(
                letter.key, None, error=f"letter {letter.key}: {type(exc).__name__}: {exc}"
            )
            continue
        documents.append((index, document))
        progress.step(index + 1)
    if documents:
        pages = [page for _, doc in documents for page in doc.pages]
        batch = documents[0][1].copy(pages).write_pdf(pdf_variant=pdf_variant)
        reader = pypdf.PdfReader(io.BytesIO(batch))
        starts = _split_points(reader, [i for i, _ in documents]) + [len(reader.pages)]
        for position, (index, doc) in enumerate(documents):
            first, last = starts[position], starts[position + 1]
            if last - first != len(doc.pages):
                raise RuntimeError(
                    f"letter {letters[index].key}: outline gives {last - first} pages, "
                    f"layout gave {len(doc.pages)}"
                )
            data = _letter_pdf(reader, first, last, doc.metadata, pdf_variant)
            results[index] = LetterPdf(letters[index].key, data, pages=last - first)
    return [results[i] for i in range(len(letters))]


def cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _worker(letters: list[LetterSource], pdf_variant: str | None, root: str) -> list[LetterPdf]:
    return render_batch(letters, pdf_variant=pdf_variant, root=Path(root))


def render_many(
    letters: Sequence[LetterSource],
    *,
    workers: int | None = None,
    chunk_size: int = 50,
    pdf_variant: str | None = None,
    root: Path = TEMPLATES_DIR,
) -> list[LetterPdf]:
    """``render_batch`` spread over a process pool (default: every usable core), in order.

    Letters go to workers in chunks of ``chunk_size``; each chunk is one WeasyPrint document.
    Progress (done/total, rate, time left) is logged every few seconds.
    """
    workers = workers or cores()
    chunks = [list(letters[i : i + chunk_size]) for i in range(0, len(letters), chunk_size)]
    started = time.monotonic()
    progress = Progress("rendered", len(letters))
    done = 0
    results: dict[int, list[LetterPdf]] = {}

    if workers <= 1 or len(chunks) <= 1:
        for number, chunk in enumerate(chunks):
            results[number] = render_batch(chunk, pdf_variant=pdf_variant, root=root)
            done += len(chunk)
            progress.step(done)
    else:
        # forkserver: no fork of a threaded Airflow task process; the server preloads us once
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["erpmail.pdf"])
        with ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=context) as pool:
            futures = {
                pool.submit(_worker, chunk, pdf_variant, str(root)): number
                for number, chunk in enumerate(chunks)
            }
            for future in as_completed(futures):
                number = futures[future]
                results[number] = future.result()
                done += len(chunks[number])
                progress.step(done)
    out = [pdf for number in range(len(chunks)) for pdf in results[number]]
    failed = sum(1 for pdf in out if not pdf.ok)
    elapsed = time.monotonic() - started
    log.info(
        "rendered %d letters (%d failed) in %.1f s with %d worker(s): %.1f letters/s",
        len(out) - failed,
        failed,
        elapsed,
        workers,
        len(out) / elapsed if elapsed else 0.0,
    )
    return out
