"""Benchmark: the mailbox import against a naive sequential import and a bare fetch loop.

Same run, same Dovecot mailbox (IMAPS, verified against a test CA), same mails: a mix of
plain, HTML-alternative, attachment and latin-1 mails, some linking by keyword or sender.
  bare      login, select, then UID FETCH BODY.PEEK[] in chunks of --chunk UIDs; nothing kept
  naive     per mail: UID FETCH BODY.PEEK[], stdlib parse, write the .eml, insert its row,
            commit, flag it seen
  import    erpmail.inbound.importer.import_location: the same fetches plus parse, dedupe, .eml and
            attachments to the store, linking, rows in PostgreSQL, commit, flag as seen
All run --rounds times, alternating; the best round of each counts. Two parts of the
import's work are also timed alone, on the same mails in the same run, as ratios to bare:
  parse     the stdlib parser alone (BytesFeedParser, policy default, with
            erpmail.inbound.boundary's matcher) in this process, as the import parses: no fetch,
            no storage
  files     one new file per mail in the store's file system, one syncfs at the end
An import that parses every mail and stores each as its own .eml cannot beat either ratio.
Needs root (Dovecot) and PostgreSQL at ERPMAIL_TEST_DB_URL (default
postgresql://postgres@127.0.0.1:5432/test).

    .venv/bin/python bench/import.py [--mails 2000] [--chunk 100] [--rounds 2] [--attachment-kb 0]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path

import psycopg2
from scratch import scratch_database

from tests.servers.dovecot import start_dovecot
from tests.servers.tlsca import make_certs


def corpus(count: int, attachment_kb: int = 0) -> list[bytes]:
    """``count`` mails of four shapes, about 3 KB on average; with ``attachment_kb``, each
    also carries a PDF-like attachment of that size (the ERP's usual business mail)."""
    mails = []
    for n in range(count):
        msg = EmailMessage()
        msg["From"] = f"Kunde {n} <kunde{n % 50}@example.org>"
        msg["To"] = "eingang@erp.example.com"
        msg["Subject"] = f"Rückfrage relnr {n % 200 + 1:06d} Nr. {n}"
        msg["Date"] = "Fri, 01 Mar 2024 10:00:00 +0100"
        msg["Message-ID"] = f"<bench-{n}@example.org>"
        text = f"Guten Tag,\n\nzur Rechnung {n} haben wir eine Frage.\n" + "Text. " * 200
        if n % 4 == 0:
            msg.set_content(text)
        elif n % 4 == 1:
            msg.set_content(text)
            msg.add_alternative(f"<html><body><p>{text}</p></body></html>", subtype="html")
        elif n % 4 == 2:
            msg.set_content(text)
            msg.add_attachment(
                os.urandom(2000), maintype="application", subtype="pdf", filename=f"Beleg {n}.pdf"
            )
        else:
            msg.set_content(text, charset="iso-8859-1", cte="quoted-printable")
        if attachment_kb:
            msg.add_attachment(
                os.urandom(attachment_kb * 1024),
                maintype="application",
                subtype="pdf",
                filename=f"Rechnung {n}.pdf",
            )
        mails.append(msg.as_bytes(policy=msg.policy.clone(linesep="\r\n")))
    return mails


def bare(user, ca_file: str, chunk: int) -> tuple[float, int]:
    """Seconds and bytes for the bare loop over the whole INBOX."""
    import ssl

    from imapclient import IMAPClient

    started = time.perf_counter()
    total = 0
    with IMAPClient(
        user.host, port=user.imaps_port, ssl_context=ssl.create_default_context(cafile=ca_file)
    ) as client:
        client.login(user.name, user.password)
        client.select_folder("INBOX", readonly=True)
        uids = client.search("ALL")
        for start in range(0, len(uids), chunk):
            for item in client.fetch(uids[start : start + chunk], ["BODY.PEEK[]"]).values():
                total += len(item[b"BODY[]"])
    return time.perf_counter() - started, total


def naive(url: str, location: int, folder: Path) -> float:
    """Seconds for the naive sequential import of the whole INBOX into ``location``."""
    from email import policy
    from email.parser import BytesParser

    from imapclient import SEEN

    from erpmail.inbound.imap import ImapHook

    folder.mkdir(parents=True)
    conn = psycopg2.connect(url)
    started = time.perf_counter()
    with ImapHook("imap_bench").client() as client:
        client.select_folder("INBOX")
        for uid in client.search("ALL"):
            raw = client.fetch([uid], ["BODY.PEEK[]"])[uid][b"BODY[]"]
            msg = BytesParser(policy=policy.default).parsebytes(raw)
            body = msg.get_body(("plain",))
            path = folder / f"{uid}.eml"
            path.write_bytes(raw)
            with conn.cursor() as cur:
                cur.execute(
                    "INSERT INTO mail.messages (direction, location_id, uid, message_id, sha256,"
                    " eml_path, size_bytes, subject, from_address, body_text)"
                    " VALUES ('in', %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    (
                        location,
                        uid,
                        str(msg["message-id"]),
                        hashlib.sha256(raw).hexdigest(),
                        str(path),
                        len(raw),
                        str(msg["subject"] or ""),
                        msg["from"].addresses[0].addr_spec,
                        body.get_content() if body else None,
                    ),
                )
            conn.commit()
            client.add_flags([uid], [SEEN])
    seconds = time.perf_counter() - started
    conn.close()
    shutil.rmtree(folder)
    return seconds


def client_cpu() -> float:
    """CPU seconds of this process and of the children it reaped: the import starts none,
    but an import that did (older versions parsed in worker processes) is counted whole."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def parse_floor(mails: list[bytes]) -> float:
    """Seconds for the stdlib parser alone over ``mails``, in this process."""
    from email import policy

    from erpmail.inbound import boundary  # its boundary matcher, as the import parses

    started = time.perf_counter()
    for raw in mails:
        parser = boundary.bytes_feed_parser(policy.default)
        parser.feed(raw)
        parser.close()
    return time.perf_counter() - started


def files_floor(mails: list[bytes], folder: Path) -> float:
    """Seconds to write each mail to its own new file under ``folder``, then one sync."""
    from erpmail.core import archive

    folder.mkdir(parents=True)
    started = time.perf_counter()
    for n, raw in enumerate(mails):
        with open(folder / f"{n}.eml", "wb") as out:
            out.write(raw)
    archive._syncfs(folder)
    seconds = time.perf_counter() - started
    shutil.rmtree(folder)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mails", type=int, default=2000)
    parser.add_argument("--chunk", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--attachment-kb", type=int, default=0, help="a PDF of this size per mail")
    parser.add_argument("--profile", action="store_true", help="cProfile the last import round")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    tmp = Path(tempfile.mkdtemp(prefix="erpmail-bench-import-"))
    certs = make_certs(tmp / "tls")
    server = start_dovecot(certs)
    try:
        run(args, tmp, certs, server)
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, tmp: Path, certs, server) -> None:
    """The rounds, in a scratch database with 200 seeded partners and a new Dovecot user."""
    with scratch_database(seed_partners=200) as url:
        os.environ["ERPMAIL_DB_URL"] = url
        user = server.add_user()
        os.environ["AIRFLOW_CONN_IMAP_BENCH"] = json.dumps(
            {
                "conn_type": "imap",
                "host": user.host,
                "port": user.imaps_port,
                "login": user.name,
                "password": user.password,
                "extra": {"ca_file": str(certs.ca_cert)},
            }
        )
        from erpmail.inbound import importer
        from erpmail.inbound.imap import ImapHook

        mails = corpus(args.mails, args.attachment_kb)
        with ImapHook("imap_bench").client() as client:
            for raw in mails:
                client.append("INBOX", raw)
        print(f"{len(mails)} mails, {sum(map(len, mails)) / 1e6:.1f} MB in Dovecot (IMAPS)")

        conn = psycopg2.connect(url)
        with conn.cursor() as cur:
            cur.execute(
                "INSERT INTO mail.import_locations (name, conn_id, after_import, link_keywords,"
                " store_attachments) VALUES ('bench', 'imap_bench', 'flag_seen',"
                ' \'{"relnr": "partner"}\', true) RETURNING id'
            )
            location = cur.fetchone()[0]
            cur.execute(
                "INSERT INTO mail.import_locations (name, conn_id) VALUES ('naive', 'imap_bench')"
                " RETURNING id"
            )
            naive_location = cur.fetchone()[0]
        conn.commit()

        bare_times, naive_times, import_times, parse_times, file_times = [], [], [], [], []
        bare_cpu, import_cpu = [], []
        for round_ in range(args.rounds):
            cpu = client_cpu()
            seconds, size = bare(user, str(certs.ca_cert), args.chunk)
            bare_cpu.append(client_cpu() - cpu)
            bare_times.append(seconds)
            with conn.cursor() as cur:
                cur.execute("TRUNCATE mail.messages CASCADE")
            conn.commit()
            naive_times.append(naive(url, naive_location, tmp / f"naive{round_}"))
            parse_times.append(parse_floor(mails))
            file_times.append(files_floor(mails, tmp / f"files{round_}"))
            # a fresh start for the import: no rows, no watermark, an empty store
            with conn.cursor() as cur:
                cur.execute("TRUNCATE mail.messages, mail.import_watermarks CASCADE")
            conn.commit()
            os.environ["ERPMAIL_ARCHIVE_URL"] = f"file://{tmp / f'archive{round_}'}"
            profiler = None
            if args.profile and round_ == args.rounds - 1:
                import cProfile

                profiler = cProfile.Profile()
                profiler.enable()
            started, cpu = time.perf_counter(), client_cpu()
            summary = importer.import_location(location, fetch_chunk=args.chunk)
            import_times.append(time.perf_counter() - started)
            import_cpu.append(client_cpu() - cpu)
            if profiler is not None:
                import pstats

                profiler.disable()
                pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
            assert summary.new == len(mails) and summary.failed == 0, str(summary)
            print(
                f"round {round_ + 1}: bare {len(mails) / seconds:7.0f} mails/s   "
                f"naive {len(mails) / naive_times[-1]:7.0f} mails/s   "
                f"import {len(mails) / import_times[-1]:7.0f} mails/s   "
                f"parse alone {len(mails) / parse_times[-1]:7.0f}   "
                f"files alone {len(mails) / file_times[-1]:7.0f}   client CPU per mail: "
                f"bare {bare_cpu[-1] / len(mails) * 1000:.2f} ms, "
                f"import {import_cpu[-1] / len(mails) * 1000:.2f} ms"
            )
        conn.close()
        bare_rate = len(mails) / min(bare_times)
        naive_rate = len(mails) / min(naive_times)
        import_rate = len(mails) / min(import_times)
        print(f"bare UID FETCH BODY.PEEK[] loop : {bare_rate:8.0f} mails/s ({size / 1e6:.1f} MB)")
        print(f"naive sequential import         : {naive_rate:8.0f} mails/s")
        print(f"erpmail import                  : {import_rate:8.0f} mails/s")
        print(
            f"ratio import / naive            : {import_rate / naive_rate:8.2f}"
            "  (target >= 2 text mail, >= 1.5 PDF mail)"
        )
        print(
            f"ratio import / bare             : {import_rate / bare_rate:8.2f}  (of the physical limit)"
        )
        print(
            f"client CPU per mail, least      : bare {min(bare_cpu) / len(mails) * 1000:.2f} ms,"
            f" import {min(import_cpu) / len(mails) * 1000:.2f} ms"
        )
        for label, times in (
            ("stdlib parse alone, 1 process  ", parse_times),
            ("one file per mail alone        ", file_times),
        ):
            rate = len(mails) / min(times)
            print(
                f"{label}: {rate:8.0f} mails/s = {rate / bare_rate:.2f} of bare, a ceiling for the import"
            )


if __name__ == "__main__":
    main()
