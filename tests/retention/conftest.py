"""Fixtures of the retention tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ERPMAIL_ARCHIVE_URL", f"file://{tmp_path}/store")
    return tmp_path / "store"
