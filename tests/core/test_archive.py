import pytest

from erpmail.core import archive


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


def test_delete_many_on_a_local_store_reports_each_key(_store):
    keys = [archive.store(f"mail/2024/{n}.eml", b"x") for n in range(3)]
    (_store / "mail/2024/stuck.eml").mkdir()  # a directory where a file should be: unlinking fails

    assert archive.delete_many([*keys, "mail/2024/gone.eml", keys[0]]) == {
        keys[0]: True,
        keys[1]: True,
        keys[2]: True,
        "mail/2024/gone.eml": False,
    }
    assert sorted(p.name for p in (_store / "mail/2024").iterdir()) == ["stuck.eml"]

    archive.store("a.pdf", b"1")
    with pytest.raises(archive.DeleteError) as info:
        archive.delete_many(["mail/2024/stuck.eml", "../outside", "a.pdf"])
    assert info.value.done == {"a.pdf": True}  # the good key is removed all the same
    assert set(info.value.errors) == {"mail/2024/stuck.eml", "../outside"}
    assert isinstance(info.value.errors["../outside"], ValueError)
    assert not archive.exists("a.pdf") and (_store / "mail/2024/stuck.eml").is_dir()


def test_delete_many_on_another_file_system_uses_one_bulk_delete(monkeypatch, tmp_path):
    # local:// is fsspec's local file system under another name: the path object store code
    # path, as for s3:// (Airflow registers no in-memory one)
    monkeypatch.setenv("ERPMAIL_ARCHIVE_URL", f"local://{tmp_path}/objects")
    assert archive.local_root() is None
    keys = [archive.store(f"dunning/run-1/{n}.pdf", b"%PDF") for n in range(4)]
    odd = archive.path_of("mail/x[1].eml")  # glob characters: removed alone, never expanded
    odd.parent.mkdir(parents=True, exist_ok=True)
    odd.write_bytes(b"From: a")
    archive.store("mail/x1.eml", b"a file the pattern x[1] would match")
    keys.append("mail/x[1].eml")
    fs = archive.root().fs
    bulk_calls = []
    real_rm = fs.rm
    monkeypatch.setattr(fs, "rm", lambda paths, **kw: bulk_calls.append(paths) or real_rm(paths))

    result = archive.delete_many([*keys, "dunning/run-1/missing.pdf", "nowhere/a.pdf"])

    assert result == {
        **dict.fromkeys(keys, True),
        "dunning/run-1/missing.pdf": False,
        "nowhere/a.pdf": False,
    }
    assert len(bulk_calls) == 1 and len(bulk_calls[0]) == 4
    assert not any(archive.exists(k) for k in keys)
    assert archive.read("mail/x1.eml").startswith(b"a file")


def test_a_folder_removed_after_a_store_is_made_again(_store):
    import shutil

    archive.store("mail/2024/03/1-a.eml", b"first")
    shutil.rmtree(_store / "mail")  # by hand, or by another process
    key = archive.store("mail/2024/03/1-b.eml", b"second")
    assert archive.read(key) == b"second"
    assert sorted(p.name for p in (_store / "mail/2024/03").iterdir()) == ["1-b.eml"]
