"""The document store: PDFs, print batches and ``.eml`` files under one root.

The root is ``ERPMAIL_ARCHIVE_URL`` (any fsspec URL, e.g. ``s3://bucket/erpmail``, with an
Airflow connection id in ``ERPMAIL_ARCHIVE_CONN_ID``), else ``var/archive``. Callers keep
the *relative* key on their rows, so the store can move without rewriting the database.
"""

from __future__ import annotations

import os
import re
import uuid

from airflow.sdk import ObjectStoragePath

from erpmail.db import VAR_DIR

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def root() -> ObjectStoragePath:
    """The store's root path."""
    url = os.environ.get("ERPMAIL_ARCHIVE_URL") or f"file://{VAR_DIR / 'archive'}"
    return ObjectStoragePath(url, conn_id=os.environ.get("ERPMAIL_ARCHIVE_CONN_ID"))


def safe_part(text: str, max_len: int = 80) -> str:
    """One path segment from free text: no separators, no ``..``, no control characters."""
    part = _UNSAFE.sub("_", text).strip("._")[:max_len]
    return part or "_"


def path_of(key: str) -> ObjectStoragePath:
    """The stored object for a key; refuses keys that would leave the root."""
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"archive key {key!r} is not a plain relative path")
    return root().joinpath(*parts)


def store(key: str, data: bytes) -> str:
    """Write ``data`` under ``key`` atomically (temp name, then rename where the store can); return the key."""
    target = path_of(key)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    tmp.write_bytes(data)
    tmp.rename(target)
    return key


def read(key: str) -> bytes:
    """The bytes stored under ``key``."""
    return path_of(key).read_bytes()


def exists(key: str) -> bool:
    """Whether an object is stored under ``key``."""
    return path_of(key).exists()


def delete(key: str) -> bool:
    """Remove the object under ``key``; False when it was already gone."""
    target = path_of(key)
    if not target.exists():
        return False
    target.unlink()
    return True
