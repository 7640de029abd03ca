"""The archive check: files no row names and rows whose file is gone, by key."""

from __future__ import annotations

from erpmail import cli
from erpmail.core import archive, inventory


def test_the_check_reports_orphans_and_missing_files_and_fails(db, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ERPMAIL_ARCHIVE_URL", f"file://{tmp_path}")
    archive.store("mail/2024/03/kept.eml", b"x")
    archive.store("mail/2024/03/stray.eml", b"x")
    (tmp_path / "mail/2024/03/.kept.eml.0123456789abcdef0123456789abcdef.tmp").write_bytes(b"x")
    with db.cursor() as cur:
        cur.execute(
            "INSERT INTO mail.messages (direction, sha256, eml_path, size_bytes) VALUES"
            " ('out', repeat('a', 64), 'mail/2024/03/kept.eml', 1),"
            " ('out', repeat('b', 64), 'mail/2024/03/gone.eml', 1)"
        )
    db.commit()

    report = inventory.check()

    assert not report.clean and (report.files, report.named) == (3, 2)
    assert report.orphans == [
        "mail/2024/03/.kept.eml.0123456789abcdef0123456789abcdef.tmp",
        "mail/2024/03/stray.eml",
    ]
    assert report.missing == ["mail/2024/03/gone.eml"]
    assert cli.main(["archive", "check"]) == 1
    out = capsys.readouterr().out
    assert "file without a row: mail/2024/03/stray.eml" in out
    assert "missing: mail/2024/03/gone.eml" in out


def test_an_empty_store_and_database_are_clean(db, tmp_path, monkeypatch):
    monkeypatch.setenv("ERPMAIL_ARCHIVE_URL", f"file://{tmp_path}")
    assert inventory.check().clean
    assert cli.main(["archive", "check"]) == 0
