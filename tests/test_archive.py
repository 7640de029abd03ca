import pytest

from erpmail import archive


@pytest.fixture(autouse=True)
def _store(tmp_path, monkeypatch):
    monkeypatch.setenv("ERPMAIL_ARCHIVE_URL", f"file://{tmp_path}/store")
    return tmp_path / "store"


def test_store_read_delete_round_trip(_store):
    key = archive.store("dunning/2026/run-1/000123.pdf", b"%PDF-1.7 x")
    assert (_store / "dunning/2026/run-1/000123.pdf").read_bytes() == b"%PDF-1.7 x"
    assert archive.read(key) == b"%PDF-1.7 x"
    assert archive.exists(key)
    assert archive.delete(key) is True
    assert not archive.exists(key)
    assert archive.delete(key) is False
    assert [p.name for p in (_store / "dunning/2026/run-1").iterdir()] == []


@pytest.mark.parametrize("key", ["../etc/passwd", "a/../../b", "/abs", "a//b", ""])
def test_keys_that_leave_the_root_are_refused(key):
    with pytest.raises(ValueError, match="plain relative path"):
        archive.path_of(key)


@pytest.mark.parametrize(
    "raw,safe",
    [("../../etc/passwd", "etc_passwd"), ("Rechnung Ä\r\n.pdf", "Rechnung_.pdf"), ("..", "_")],
)
def test_safe_part_leaves_no_separator_or_dots(raw, safe):
    assert archive.safe_part(raw) == safe


def test_store_stream_writes_slices_atomically_and_leaves_no_temp(_store):
    key = archive.store_stream("mail/2024/03/1-abc.eml", iter([b"From: a\r\n", b"\r\nbody"]))
    assert archive.read(key) == b"From: a\r\n\r\nbody"
    archive.sync([key])  # durable; nothing else visible changes
    assert [p.name for p in (_store / "mail/2024/03").iterdir()] == ["1-abc.eml"]


def test_failed_stream_leaves_neither_file_nor_temp(_store):
    def broken():
        yield b"part"
        raise OSError("source gone")

    with pytest.raises(OSError, match="source gone"):
        archive.store_stream("mail/x.eml", broken())
    assert list((_store / "mail").iterdir()) == []


def test_root_follows_the_environment(_store, monkeypatch, tmp_path):
    archive.store("a.pdf", b"1")
    monkeypatch.setenv("ERPMAIL_ARCHIVE_URL", f"file://{tmp_path}/other")
    archive.store("a.pdf", b"2")
    assert (_store / "a.pdf").read_bytes() == b"1"
    assert (tmp_path / "other" / "a.pdf").read_bytes() == b"2"
    assert archive.local_root() == tmp_path / "other"
    assert str(archive.root()).endswith("other")
