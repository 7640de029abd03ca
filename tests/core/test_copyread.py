"""bytes_by_id reads bytea through a binary COPY exactly as a query returns it."""

from __future__ import annotations

import os

import pytest

from erpmail.core.copyread import bytes_by_id, parse
from erpmail.core.db import transaction

BLOBS = {1: b"", 2: bytes(range(256)) * 3, 3: os.urandom(200_000), 40_000_000_000: b"\xff\xff"}


def test_rows_come_back_as_stored(db):
    with transaction(db) as cur:
        cur.execute("CREATE TEMP TABLE blobs (id bigint PRIMARY KEY, data bytea)")
        cur.executemany("INSERT INTO blobs VALUES (%s, %s)", list(BLOBS.items()))
        got = bytes_by_id(cur, "SELECT id, data FROM blobs WHERE id = ANY(%s)", ([*BLOBS, 9],))
        cur.execute("SELECT id, data FROM blobs")
        selected = {i: bytes(d) for i, d in cur.fetchall()}
    assert got == selected == BLOBS


def test_a_null_or_a_wrong_shape_is_refused(db):
    with transaction(db) as cur:
        with pytest.raises(ValueError, match="not \\(bigint, bytea\\)"):
            bytes_by_id(cur, "SELECT 1::bigint, NULL::bytea", ())
    with transaction(db) as cur:
        with pytest.raises(ValueError, match="not \\(bigint, bytea\\)"):
            bytes_by_id(cur, "SELECT 1::int, 'x'::bytea", ())
    with pytest.raises(ValueError, match="binary format"):
        parse(b"1\tabc\n" + b"\0" * 20)
