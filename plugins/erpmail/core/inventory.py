"""The archive's inventory: every file in the document store against every key a row names.

A file no row names is an orphan (a write whose rows never committed, a delete that did not
finish); a row naming a missing file has lost its file. Neither may happen: the import and
retention journal what they are about to write or delete and their next run removes what an
interrupted one left. ``erpmail archive check`` reports both kinds; files a journal names are
counted apart, as work in progress.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from erpmail.core import archive, db

# every column that holds an archive key
NAMED_KEYS = """
SELECT eml_path FROM mail.messages
UNION ALL SELECT path FROM mail.attachments WHERE path IS NOT NULL
UNION ALL SELECT pdf_path FROM erp.letters WHERE pdf_path IS NOT NULL
UNION ALL SELECT print_batch_path FROM erp.runs WHERE print_batch_path IS NOT NULL"""
# an import's .eml keys about to be written (their attachments beside them); a purge's keys
# about to be deleted
JOURNALED_IMPORTS = "SELECT unnest(keys) FROM mail.import_pending_files"
JOURNALED_DELETIONS = "SELECT unnest(keys) FROM mail.retention_pending_deletions"
SHOWN = 50


@dataclass
class Report:
    """What the check found: counts, and the keys of each kind."""

    files: int = 0
    named: int = 0
    orphans: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    journaled: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """No orphan file and no missing file."""
        return not self.orphans and not self.missing

    def __str__(self) -> str:
        lines = [
            f"{self.files} files, {self.named} keys named by rows: {len(self.orphans)} files no "
            f"row names, {len(self.missing)} rows whose file is missing, {len(self.journaled)} "
            "files of an import or purge in progress or interrupted"
        ]
        for title, keys in (("file without a row", self.orphans), ("missing", self.missing)):
            lines += [f"  {title}: {key}" for key in keys[:SHOWN]]
            if len(keys) > SHOWN:
                lines.append(f"  ... and {len(keys) - SHOWN} more")
        return "\n".join(lines)


def check(conn=None) -> Report:
    """Compare the store's files with the keys the database names."""
    with db.transaction(conn) as cur:
        cur.execute(NAMED_KEYS)
        named = {key for (key,) in cur.fetchall()}
        cur.execute(JOURNALED_IMPORTS)
        imports = {key for (key,) in cur.fetchall()}
        cur.execute(JOURNALED_DELETIONS)
        deletions = {key for (key,) in cur.fetchall()}
    folders = {key.removesuffix(".eml") for key in imports}
    stored = set(archive.keys_under())
    report = Report(files=len(stored), named=len(named))
    for key in sorted(stored - named):
        if key in imports or key in deletions or _inside(key, folders) or _temp_of(key, imports):
            report.journaled.append(key)
        else:
            report.orphans.append(key)
    report.missing = sorted(named - stored)
    return report


def _temp_of(key: str, imports: set[str]) -> bool:
    """Whether ``key`` is the temp file of a write of a journaled key."""
    if not archive.is_temp(key):
        return False
    folder, _, name = key.rpartition("/")
    target = name[1:].rsplit(".", 2)[0]  # ".<name>.<32 hex>.tmp"
    return (f"{folder}/{target}" if folder else target) in imports


def _inside(key: str, folders: set[str]) -> bool:
    folder = key.rpartition("/")[0]
    while folder:
        if folder in folders:
            return True
        folder = folder.rpartition("/")[0]
    return False
