"""Outgoing and received file names: one safe path segment, capped in bytes."""

from __future__ import annotations

import pytest

from erpmail.core import filenames


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        (
            "Zahlungserinnerung – Kundennummer ..\\..\\evil:x.pdf",
            "Zahlungserinnerung – Kundennummer ._._evil_x.pdf",
        ),
        ("rechnung\u202efdp.exe", "rechnungfdp.exe"),  # no right-to-left override
        ("a\u200fb\u2066c\u2069.pdf", "abc.pdf"),
        ("CON", "_CON"),
        ("nul.txt", "_nul.txt"),
        ("COM1.pdf", "_COM1.pdf"),
        ("console.pdf", "console.pdf"),
        ("  .hidden. ", "hidden"),
        ("\x07\x00", "fallback.pdf"),
        ("Größe.pdf", "Größe.pdf"),
        ("€" * 100 + ".pdf", "€" * 65 + ".pdf"),  # 3 bytes each: cut at a character
    ],
)
def test_safe_filename(name, safe):
    assert filenames.safe_filename(name, "fallback.pdf") == safe
    assert len(safe.encode()) <= filenames.MAX_FILENAME_BYTES


def test_subjects_lose_only_the_reordering_controls():
    assert filenames.without_bidi_controls("Rechnung \u202e4711\u202c – Müller") == (
        "Rechnung 4711 – Müller"
    )
