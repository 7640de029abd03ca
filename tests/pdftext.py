"""The text of a PDF as the tests read it: pages joined by newlines, no-break spaces plain."""

from __future__ import annotations

import io

import pypdf


def pdf_text(data: bytes) -> str:
    """Every page's extracted text, newline-joined, with U+00A0 as an ordinary space."""
    pages = pypdf.PdfReader(io.BytesIO(data)).pages
    return "\n".join(page.extract_text() for page in pages).replace("\xa0", " ")
