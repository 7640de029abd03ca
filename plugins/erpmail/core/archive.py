"""The document store: PDFs, print batches and ``.eml`` files under one root.

The root is ``ERPMAIL_ARCHIVE_URL`` (any fsspec URL, e.g. ``s3://bucket/erpmail``, with an
Airflow connection id in ``ERPMAIL_ARCHIVE_CONN_ID``), else ``var/archive``. Callers keep
the *relative* key on their rows, so the store can move without rewriting the database.
A local (``file://``) store is written with plain ``open``/``os.replace``: building an
ObjectStoragePath per file costs about a millisecond, the write itself a few microseconds.
"""

from __future__ import annotations

import ctypes
import glob
import os
import re
import uuid
from collections.abc import Iterable, Iterator
from functools import lru_cache
from itertools import groupby
from pathlib import Path
from urllib.parse import unquote, urlsplit

from airflow.sdk import ObjectStoragePath

from erpmail.core.db import VAR_DIR

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_TEMP = re.compile(r"\..+\.[0-9a-f]{32}\.tmp")
_GLOB = re.compile(r"[*?\[]")  # a bulk delete would expand these: such keys go one by one
MAX_KNOWN_FOLDERS = 10_000
_FOLDERS: set[Path] = set()  # local folders made by this process


class DeleteError(Exception):
    """Some keys could not be removed; the others were. ``done`` maps each removed (True) or
    already-gone (False) key, ``errors`` each failed key to its exception."""

    def __init__(self, done: dict[str, bool], errors: dict[str, Exception]):
        first = next(iter(errors.items()))
        super().__init__(f"{len(errors)} archive key(s) not removed, e.g. {first[0]}: {first[1]}")
        self.done = done
        self.errors = errors


def _settings() -> tuple[str, str | None]:
    url = os.environ.get("ERPMAIL_ARCHIVE_URL") or f"file://{VAR_DIR / 'archive'}"
    return url, os.environ.get("ERPMAIL_ARCHIVE_CONN_ID")


@lru_cache(maxsize=8)
def _root(url: str, conn_id: str | None) -> ObjectStoragePath:
    return ObjectStoragePath(url, conn_id=conn_id)


def root() -> ObjectStoragePath:
    """The store's root path (resolved once per URL and connection)."""
    return _root(*_settings())


def local_root() -> Path | None:
    """The root as a local directory when the store is a ``file://`` URL, else None."""
    url, _ = _settings()
    parts = urlsplit(url)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
        return None
    return Path(unquote(parts.path))


def safe_part(text: str, max_len: int = 80) -> str:
    """One path segment from free text: no separators, no ``..``, no control characters."""
    part = _UNSAFE.sub("_", text).strip("._")[:max_len]
    return part or "_"


def _parts(key: str) -> list[str]:
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"archive key {key!r} is not a plain relative path")
    return parts


def path_of(key: str) -> ObjectStoragePath:
    """The stored object for a key; refuses keys that would leave the root."""
    return root().joinpath(*_parts(key))


def store(key: str, data: bytes) -> str:
    """Write ``data`` under ``key`` atomically (temp name, then rename where the store can); return the key."""
    return store_stream(key, (data,))


def store_stream(key: str, chunks: Iterable[bytes]) -> str:
    """Write the slices under ``key`` atomically, like :func:`store`; return the key.

    Nothing is flushed to disk here: a caller whose next step depends on the bytes
    surviving a power loss calls :func:`sync` once for everything it wrote.
    """
    parts = _parts(key)
    local = local_root()
    if local is not None:
        target = local.joinpath(*parts)
        folder = target.parent
        if folder not in _FOLDERS:  # an import writes thousands of files into a few folders
            folder.mkdir(parents=True, exist_ok=True)
            if len(_FOLDERS) >= MAX_KNOWN_FOLDERS:
                _FOLDERS.clear()
            _FOLDERS.add(folder)
        tmp = folder / f".{target.name}.{uuid.uuid4().hex}.tmp"
        try:
            try:
                out = open(tmp, "wb")  # noqa: SIM115 (closed below, after the retry)
            except FileNotFoundError:  # the folder went since it was made: make it again
                folder.mkdir(parents=True, exist_ok=True)
                out = open(tmp, "wb")  # noqa: SIM115
            with out:
                for chunk in chunks:
                    out.write(chunk)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return key
    target = root().joinpath(*parts)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    with tmp.open("wb") as out:
        for chunk in chunks:
            out.write(chunk)
    tmp.rename(target)
    return key


def sync(keys: Iterable[str]) -> None:
    """Make what was stored under ``keys`` durable (local store; object stores are already).

    One ``syncfs`` of the store's file system where Linux offers it (one call, ~tens of ms,
    however many files), else an ``fsync`` per file and directory.
    """
    local = local_root()
    keys = list(keys)
    if local is None or not keys:
        return
    if _syncfs(local):
        return
    dirs = set()
    for key in keys:
        target = local.joinpath(*_parts(key))
        dirs.add(target.parent)
        fd = os.open(target, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for folder in dirs:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _syncfs(folder: Path) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.syncfs
    except (OSError, AttributeError):
        return False
    fd = os.open(folder, os.O_RDONLY)
    try:
        return call(fd) == 0
    finally:
        os.close(fd)


def read(key: str) -> bytes:
    """The bytes stored under ``key``."""
    return path_of(key).read_bytes()


def exists(key: str) -> bool:
    """Whether an object is stored under ``key``."""
    return path_of(key).exists()


def keys_under(prefix: str = "") -> Iterator[str]:
    """Every key stored under the folder ``prefix`` (the whole store when empty), temp files of
    interrupted writes included."""
    local = local_root()
    if local is not None:
        base = local.joinpath(*_parts(prefix)) if prefix else local
        for folder, _, files in os.walk(base):
            rel = Path(folder).relative_to(local).as_posix()
            for name in files:
                yield name if rel == "." else f"{rel}/{name}"
        return
    base = path_of(prefix) if prefix else root()
    top = str(root()).rstrip("/") + "/"
    if base.exists():
        for found in base.rglob("*"):
            if found.is_file():
                yield str(found).removeprefix(top)


def temp_keys(key: str) -> list[str]:
    """The temp files an interrupted write of ``key`` may have left beside it."""
    parts = _parts(key)
    folder = "/".join(parts[:-1])
    pattern = f".{glob.escape(parts[-1])}.*.tmp"
    local = local_root()
    base = local.joinpath(*parts[:-1]) if local is not None else path_of(folder)
    if not base.exists():
        return []
    return [f"{folder}/{p.name}" if folder else p.name for p in base.glob(pattern)]


def is_temp(key: str) -> bool:
    """Whether ``key`` names the temp file of a write (``.<name>.<32 hex>.tmp``)."""
    return _TEMP.fullmatch(key.rsplit("/", 1)[-1]) is not None


def delete(key: str) -> bool:
    """Remove the object under ``key``; False when it was already gone."""
    target = path_of(key)
    if not target.exists():
        return False
    target.unlink()
    return True


def delete_many(keys: Iterable[str]) -> dict[str, bool]:
    """Remove the objects under ``keys``: each key -> True removed, False already gone.

    The root is resolved once: a local store unlinks each file (``os.unlink``), another store
    lists each folder once and hands the objects found to its file system's bulk delete. Every
    key is tried; when some fail, ``DeleteError`` carries the results and the failures.
    """
    done: dict[str, bool] = {}
    errors: dict[str, Exception] = {}
    local = local_root()
    if local is not None:
        for key in dict.fromkeys(keys):
            try:
                os.unlink(local.joinpath(*_parts(key)))
                done[key] = True
            except FileNotFoundError:
                done[key] = False
            except (OSError, ValueError) as exc:
                errors[key] = exc
    else:
        _delete_remote(list(dict.fromkeys(keys)), done, errors)
    if errors:
        raise DeleteError(done, errors)
    return done


def _delete_remote(keys: list[str], done: dict[str, bool], errors: dict[str, Exception]) -> None:
    base = root()
    fs, prefix = base.fs, str(base.path).rstrip("/")
    paths: dict[str, str] = {}
    for key in keys:
        try:
            paths[key] = fs._strip_protocol(f"{prefix}/{'/'.join(_parts(key))}")
        except ValueError as exc:
            errors[key] = exc
    found: list[str] = []
    by_folder = sorted(paths.items(), key=lambda item: item[1].rsplit("/", 1)[0])
    for folder, group in groupby(by_folder, key=lambda item: item[1].rsplit("/", 1)[0]):
        group = list(group)
        try:
            listed = {fs._strip_protocol(p) for p in fs.ls(folder, detail=False)}
        except FileNotFoundError:
            listed = set()
        except Exception as exc:  # an unreadable folder fails its keys alone
            errors.update((key, exc) for key, _ in group)
            continue
        for key, path in group:
            done[key] = path in listed
            if done[key]:
                found.append(key)
    bulk = [k for k in found if not _GLOB.search(paths[k])]
    if bulk:
        try:
            fs.rm([paths[k] for k in bulk])
            bulk = []
        except Exception:  # find out which ones failed, one by one
            pass
    for key in [*bulk, *(k for k in found if _GLOB.search(paths[k]))]:
        try:
            fs.rm_file(paths[key])
        except FileNotFoundError:
            done[key] = False
        except Exception as exc:
            del done[key]
            errors[key] = exc
