"""Letters as PDF: each letter laid out and written by WeasyPrint on its own, in the calling process.

One task renders its batch sequentially; parallelism comes from mapped render tasks over the
worker slots, never from processes a task starts. What every letter shares is made once per
process and template root: the font configuration and the parsed letter stylesheet. Each
letter is its own document, so page numbers ("Seite X von Y"), fonts (subset per letter) and
failures stay per letter. Resources are served only from ``include/templates/``: no network,
no file outside it.
"""

from __future__ import annotations

import logging
import mimetypes
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

from weasyprint import CSS, HTML, Document
from weasyprint.text.fonts import FontConfiguration
from weasyprint.urls import FatalURLFetchingError, URLFetcher, URLFetcherResponse

from erpmail.core.progress import Progress
from erpmail.documents.templates import TEMPLATES_DIR

log = logging.getLogger(__name__)

PDF_VARIANTS = (None, "pdf/a-3b")
PROGRESS_SECONDS = 5.0
# The shared letter stylesheet, as letter/base.html links it. The batch path drops this exact
# tag and passes the stylesheet parsed once instead (a user-origin sheet then: no template
# overrides a letter.css property with a less specific selector, so the cascade is the same).
LETTER_CSS = "letter/letter.css"
LETTER_CSS_LINK = f'<link rel="stylesheet" href="{LETTER_CSS}">'


class ResourceRefused(ValueError):
    """A template asked for a resource outside ``include/templates/`` (or on the network)."""


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


def pdf_variant_checked(pdf_variant: str | None) -> str | None:
    """``pdf_variant`` if erpmail writes it, else ``ValueError``."""
    if pdf_variant not in PDF_VARIANTS:
        raise ValueError(f"pdf_variant {pdf_variant!r} is not one of {PDF_VARIANTS}")
    return pdf_variant


@dataclass(frozen=True)
class Shared:
    """What every letter under one template root shares: fonts and the parsed stylesheet."""

    fonts: FontConfiguration
    letter_css: CSS


_shared: dict[Path, Shared] = {}  # filled on first use, never at import (no side effects)


def shared(root: Path = TEMPLATES_DIR) -> Shared:
    """The process's ``Shared`` for ``root``, made on first use."""
    root = Path(root).resolve()
    if root not in _shared:
        fonts = FontConfiguration()
        css = CSS(
            url=base_url(root) + LETTER_CSS, url_fetcher=TemplateFetcher(root), font_config=fonts
        )
        _shared[root] = Shared(fonts, css)
    return _shared[root]


def lay_out(
    letter: LetterSource,
    fetcher: TemplateFetcher,
    *,
    pdf_variant: str | None = None,
    root: Path = TEMPLATES_DIR,
) -> Document:
    """One letter laid out with the shared fonts and stylesheet (WeasyPrint's errors pass)."""
    common = shared(root)
    html, stylesheets = letter.html, []
    if LETTER_CSS_LINK in html:
        html, stylesheets = html.replace(LETTER_CSS_LINK, "", 1), [common.letter_css]
    return HTML(string=html, base_url=base_url(root), url_fetcher=fetcher).render(
        stylesheets=stylesheets, font_config=common.fonts, pdf_variant=pdf_variant
    )


def _failure(letter: LetterSource, exc: BaseException) -> LetterPdf:
    if isinstance(exc, FatalURLFetchingError):  # WeasyPrint's way to stop: the cause tells why
        return LetterPdf(letter.key, None, error=f"letter {letter.key}: {exc.__cause__ or exc}")
    return LetterPdf(letter.key, None, error=f"letter {letter.key}: {type(exc).__name__}: {exc}")


def render_batch(
    letters: Sequence[LetterSource],
    *,
    pdf_variant: str | None = None,
    root: Path = TEMPLATES_DIR,
) -> list[LetterPdf]:
    """Render ``letters`` one after the other: one ``LetterPdf`` per letter, in order.

    A letter whose template is broken or asks for a refused resource fails alone (``error``).
    PDF metadata comes from each letter's ``<title>``, ``<meta name=author|description|
    dcterms.created>``. Progress (done/total, rate, time left) is logged every few seconds,
    and a summary at the end.
    """
    pdf_variant_checked(pdf_variant)
    fetcher = TemplateFetcher(root)
    rendered_at = datetime.now(UTC).isoformat(timespec="seconds")
    progress = Progress("rendered", len(letters), unit="letters", log=log, every=PROGRESS_SECONDS)
    results = []
    for done, letter in enumerate(letters, start=1):
        try:
            document = lay_out(letter, fetcher, pdf_variant=pdf_variant, root=root)
            # a letter without <meta name=dcterms.created> is dated when it is rendered
            document.metadata.created = document.metadata.created or rendered_at
            data = document.write_pdf(pdf_variant=pdf_variant)
        except (Exception, FatalURLFetchingError) as exc:  # FatalURLFetchingError: a BaseException
            results.append(_failure(letter, exc))
        else:
            results.append(LetterPdf(letter.key, data, pages=len(document.pages)))
        progress.update(done)
    failed = sum(1 for pdf in results if not pdf.ok)
    elapsed = time.monotonic() - progress.started
    log.info(
        "rendered %d letters (%d failed) in %.1f s: %.1f letters/s",
        len(results) - failed,
        failed,
        elapsed,
        len(results) / elapsed if elapsed else 0.0,
    )
    return results
