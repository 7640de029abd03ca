"""File names and one-line texts from data we do not control (partner records, received mail).

A file name is one path segment on every system a recipient or the store may use: no path
separators (``/``, ``\\``, ``:``), none of Windows' reserved characters or device names, no
control or format characters (Unicode Cc and Cf: a right-to-left override turns
``rechnung‮fdp.exe`` into what reads as ``rechnungexe.pdf``), no leading or trailing dots and
spaces, and at most ``MAX_FILENAME_BYTES`` of UTF-8, cut at a character with the extension
kept.
"""

from __future__ import annotations

import re
import unicodedata

# The store's temp name adds 38 bytes (".", ".<32 hex>.tmp") and a second file of the same
# name " (NN)"; 255 bytes is the usual file-system limit.
MAX_FILENAME_BYTES = 200
MAX_EXTENSION_CHARS = 16

_UNSAFE = re.compile(r'[<>:"|?*/\\]')
_DOTS = re.compile(r"\.{2,}")
# CON, PRN, AUX, NUL, COM1-9, LPT1-9 (also with superscript digits), with any extension
_RESERVED = re.compile(r"(?i)(con|prn|aux|nul|com[0-9¹²³]|lpt[0-9¹²³])(\..*)?")
# the bidirectional controls: embeddings, overrides, isolates and marks
_BIDI = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def safe_filename(name: str | None, fallback: str) -> str:
    """``name`` as a safe file name (see the module), or ``fallback`` when nothing is left."""
    name = unicodedata.normalize("NFC", name or "")
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    name = _DOTS.sub(".", _UNSAFE.sub("_", name)).strip(" .")
    if not name:
        name = fallback
    if _RESERVED.fullmatch(name):
        name = f"_{name}"
    if len(name.encode()) <= MAX_FILENAME_BYTES:
        return name
    stem, dot, ext = name.rpartition(".")
    if not (dot and stem):
        stem, ext = name, ""
    return capped_name(stem, ext[:MAX_EXTENSION_CHARS])


def capped_name(stem: str, ext: str, limit: int = MAX_FILENAME_BYTES) -> str:
    """``stem.ext`` within ``limit`` bytes of UTF-8, cut at a character, never in the extension."""
    suffix = f".{ext}" if ext else ""
    room = limit - len(suffix.encode())
    cut = stem.encode()[:room].decode("utf-8", "ignore").rstrip(" .")
    return (cut or "_") + suffix


def without_bidi_controls(text: str) -> str:
    """``text`` without the characters that reorder how it displays (for subjects, names)."""
    return _BIDI.sub("", text)
