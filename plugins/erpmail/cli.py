"""The ``erpmail`` command: ``erpmail db migrate``, ``erpmail seed``, ``erpmail account
add/list``, ``erpmail location add/list``, ``erpmail mail failed/retry`` and ``erpmail
archive check``.

Accounts and import locations name Airflow connections; the rows never hold a host login
or password, those stay in the connection.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from collections.abc import Sequence
from datetime import date

import psycopg2
import psycopg2.extensions
from email_validator import EmailNotValidError, validate_email

from erpmail import seed
from erpmail.campaigns import commands as campaign_commands
from erpmail.core import db
from erpmail.inbound import linking
from erpmail.outbound import accounts

# The ids AIRFLOW_CONN_<ID> variables and the UI give: no URL, no "user:password@".
CONN_ID = re.compile(r"^[A-Za-z0-9_.-]{1,250}$")
AFTER_IMPORT = ("none", "flag_seen", "move", "delete")
LANGUAGE = re.compile(r"^[a-z]{2}$")
INSERT_LOCATION = """
INSERT INTO mail.import_locations (name, conn_id, folder, after_import, move_to, archive_folder,
    archive_subfolder, store_attachments, link_keywords, max_message_bytes, ticket_enabled,
    ticket_queue, autoreply_enabled, autoreply_account_id, notify_address, enabled, language)
VALUES (%(name)s, %(conn_id)s, %(folder)s, %(after_import)s, %(move_to)s, %(archive_folder)s,
    %(archive_subfolder)s, %(store_attachments)s, %(link_keywords)s, %(max_message_bytes)s,
    %(ticket_enabled)s, %(ticket_queue)s, %(autoreply_enabled)s, %(autoreply_account_id)s,
    %(notify_address)s, %(enabled)s, %(language)s)
RETURNING id"""
LOCATIONS = """
SELECT l.name, l.conn_id, l.folder, l.after_import, l.move_to, l.link_keywords, l.language,
       l.notify_address, a.name, p.keep_days, l.enabled
  FROM mail.import_locations l
  LEFT JOIN mail.accounts a ON a.id = l.autoreply_account_id
  LEFT JOIN mail.retention_policies p ON p.location_id = l.id
 ORDER BY l.name"""


FAILED_MAILS = """
SELECT m.id, l.name, to_char(m.archived_at, 'YYYY-MM-DD HH24:MI'), m.attempts,
       coalesce(m.from_address, ''), left(m.subject, 60), left(m.failure, 120)
  FROM mail.messages m JOIN mail.import_locations l ON l.id = m.location_id
 WHERE m.status = 'failed' ORDER BY m.id"""
LOCATION_OF_FAILED = """
SELECT id, location_id FROM mail.messages WHERE id = ANY(%s) AND status = 'failed'"""


def _migrate(args: argparse.Namespace) -> int:
    applied = db.migrate()
    print("\n".join(f"applied {name}" for name in applied) or "nothing to apply")
    return 0


def _seed(args: argparse.Namespace) -> int:
    db.migrate()
    started = time.monotonic()
    conn = db.connect()
    try:
        counts = seed.seed(conn, partners=args.partners, seed=args.seed, as_of=args.as_of)
    finally:
        conn.close()
    took = time.monotonic() - started
    print(", ".join(f"{n} {table}" for table, n in counts.items()) + f" in {took:.1f} s")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from erpmail import demo  # imports Airflow and aiosmtpd: only for this command

    return demo.main(["--partners", str(args.partners)])


def _text(value: str, field: str, *, empty: bool = False) -> str:
    """A one-line text field; a ValueError naming the field when it is empty or spans lines."""
    value = (value or "").strip()
    if (not value and not empty) or "\r" in value or "\n" in value:
        raise ValueError(f"{field}: {value!r} is empty or holds a line break")
    return value


def _conn_id(value: str, field: str) -> str:
    if not CONN_ID.match(value or ""):
        raise ValueError(
            # the value is not echoed: a URL given here may carry a password
            f"{field}: not an Airflow connection id (letters, digits, '_', '-', '.'); host, "
            "login and password belong in the connection itself"
        )
    return value


def _address(value: str, field: str) -> str:
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"{field}: {value!r} is not an e-mail address: {exc}") from exc


def _sender(value: str) -> str:
    """An address, or a whole domain the account may send for."""
    if "@" in value:
        return _address(value, "--sender")
    try:
        return validate_email(f"x@{value}", check_deliverability=False).domain
    except EmailNotValidError as exc:
        raise ValueError(f"--sender: {value!r} is neither an address nor a domain: {exc}") from exc


def _domain(value: str, field: str) -> str:
    try:
        checked = validate_email(f"postmaster@{value.strip()}", check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(f"{field}: {value!r} is not a mail domain: {exc}") from None
    return checked.ascii_domain


def _at_least(value: int | None, minimum: int, field: str) -> int | None:
    if value is not None and value < minimum:
        raise ValueError(f"{field}: {value} is below {minimum}")
    return value


def _keywords(pairs: Sequence[str]) -> dict[str, str]:
    """``keyword=type`` pairs as the location's link_keywords."""
    out = {}
    for pair in pairs:
        keyword, sep, entity_type = pair.partition("=")
        keyword, entity_type = keyword.strip(), entity_type.strip()
        if not sep or not keyword or entity_type not in linking.KEYWORD_TYPES:
            raise ValueError(
                f"--link-keyword: {pair!r} is not KEYWORD=TYPE with TYPE one of "
                f"{', '.join(linking.KEYWORD_TYPES)}"
            )
        out[keyword] = entity_type
    return out


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Rows as aligned columns under a header; empty values as '-'."""
    cells = [list(header)] + [["-" if v in (None, "") else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _refused(exc: psycopg2.IntegrityError, what: str) -> ValueError:
    """A constraint the table enforces, as an error naming the field."""
    constraint = getattr(exc.diag, "constraint_name", None) or ""
    if "accounts_one_default" in constraint:
        return ValueError(f"--default: another account is the default already ({what})")
    if exc.pgcode == "23505":  # unique_violation: the name
        return ValueError(f"name: {what} exists already")
    return ValueError(f"{what}: refused by the database: {exc.diag.message_primary}")


def _account_add(args: argparse.Namespace) -> int:
    name = _text(args.name, "name")
    if bool(args.sent_folder) != bool(args.sent_folder_conn_id):
        raise ValueError("--sent-folder and --sent-folder-conn-id go together")
    values = {
        "name": name,
        "conn_id": _conn_id(args.conn_id, "--conn-id"),
        "from_address": _address(args.from_address, "--from"),
        "display_name": _text(args.display_name, "--display-name", empty=True),
        "sender_addresses": [_sender(v) for v in args.sender],
        "is_default": args.default,
        "send_interval_seconds": _at_least(args.send_interval, 0, "--send-interval"),
        "hourly_cap": _at_least(args.hourly_cap, 1, "--hourly-cap"),
        "sent_folder_conn_id": args.sent_folder_conn_id
        and _conn_id(args.sent_folder_conn_id, "--sent-folder-conn-id"),
        "sent_folder": args.sent_folder and _text(args.sent_folder, "--sent-folder"),
        "bounce_domain": args.bounce_domain and _domain(args.bounce_domain, "--bounce-domain"),
    }
    try:
        with db.transaction() as cur:
            account = accounts.create_account(cur, **values)
    except psycopg2.IntegrityError as exc:
        raise _refused(exc, f"account {name!r}") from exc
    print(f"account {account.name!r} added (id {account.id}), sending as {account.from_address}")
    return 0


def _account_list(args: argparse.Namespace) -> int:
    with db.transaction() as cur:
        found = accounts.list_accounts(cur)
    header = (
        "name",
        "connection",
        "from",
        "display name",
        "interval s",
        "per hour",
        "sent folder",
        "bounces to",
        "also sends for",
        "default",
    )
    rows = [
        (
            a.name,
            a.conn_id,
            a.from_address,
            a.display_name,
            a.send_interval_seconds,
            a.hourly_cap,
            a.sent_folder and f"{a.sent_folder} ({a.sent_folder_conn_id})",
            a.bounce_domain and f"bounce+<token>@{a.bounce_domain}",
            ", ".join(a.sender_addresses),
            "yes" if a.is_default else "",
        )
        for a in found
    ]
    print(_table(header, rows) if rows else "no mail accounts")
    return 0


def _location_add(args: argparse.Namespace) -> int:
    name = _text(args.name, "name")
    if args.after_import == "move" and not args.move_to:
        raise ValueError("--move-to: required with --after-import move")
    if args.language and not LANGUAGE.match(args.language):
        raise ValueError(f"--language: {args.language!r} is not a two-letter code such as de")
    values = {
        "name": name,
        "conn_id": _conn_id(args.conn_id, "--conn-id"),
        "folder": _text(args.folder, "--folder"),
        "after_import": args.after_import,
        "move_to": args.move_to and _text(args.move_to, "--move-to"),
        "archive_folder": _text(args.archive_folder, "--archive-folder"),
        "archive_subfolder": _text(args.archive_subfolder, "--archive-subfolder", empty=True),
        "store_attachments": args.store_attachments,
        "link_keywords": json.dumps(_keywords(args.link_keyword)),
        "max_message_bytes": _at_least(args.max_message_bytes, 1, "--max-message-bytes"),
        "ticket_enabled": args.tickets,
        "ticket_queue": _text(args.ticket_queue, "--ticket-queue"),
        "autoreply_enabled": args.autoreply_account is not None,
        "autoreply_account_id": None,
        "notify_address": args.notify and _address(args.notify, "--notify"),
        "enabled": not args.disabled,
        "language": args.language,
    }
    _at_least(args.keep_days, 0, "--keep-days")
    try:
        with db.transaction() as cur:
            if args.autoreply_account is not None:
                try:
                    values["autoreply_account_id"] = accounts.account_by_name(
                        cur, args.autoreply_account
                    ).id
                except KeyError as exc:
                    raise ValueError(f"--autoreply-account: {exc.args[0]}") from exc
            cur.execute(INSERT_LOCATION, values)
            location_id = cur.fetchone()[0]
            if args.keep_days is not None:
                from erpmail.retention import policies

                policies.set_policy(cur, location=name, keep_days=args.keep_days)
    except psycopg2.IntegrityError as exc:
        raise _refused(exc, f"import location {name!r}") from exc
    print(
        f"import location {name!r} added (id {location_id}): {values['folder']} via {args.conn_id}"
    )
    return 0


def _location_list(args: argparse.Namespace) -> int:
    with db.transaction() as cur:
        cur.execute(LOCATIONS)
        found = cur.fetchall()
    header = (
        "name",
        "connection",
        "folder",
        "after import",
        "link keywords",
        "language",
        "alerts to",
        "autoreply",
        "keep days",
        "enabled",
    )
    rows = [
        (
            name,
            conn_id,
            folder,
            f"move to {move_to}" if after == "move" else after,
            ", ".join(f"{k}={t}" for k, t in (keywords or {}).items()),
            language,
            notify,
            autoreply,
            "forever" if keep in (None, 0) else keep,
            "yes" if enabled else "no",
        )
        for name, conn_id, folder, after, move_to, keywords, language, notify, autoreply, keep, enabled in found
    ]
    print(_table(header, rows) if rows else "no import locations")
    return 0


def _mail_failed(args: argparse.Namespace) -> int:
    with db.transaction() as cur:
        cur.execute(FAILED_MAILS)
        found = cur.fetchall()
    header = ("id", "location", "archived", "attempts", "from", "subject", "failure")
    print(_table(header, found) if found else "no failed mails")
    return 0


def _mail_retry(args: argparse.Namespace) -> int:
    from erpmail.inbound import importer  # imports the IMAP client: only for this command

    with db.transaction() as cur:
        cur.execute(LOCATION_OF_FAILED, (args.ids,))
        found = dict(cur.fetchall())
    unknown = sorted(set(args.ids) - set(found))
    if unknown:
        raise ValueError(f"ids: {', '.join(map(str, unknown))} name no failed mail")
    by_location: dict[int, list[int]] = {}
    for mail_id, location_id in found.items():
        by_location.setdefault(location_id, []).append(mail_id)
    done = sum(importer.retry(loc, ids) for loc, ids in sorted(by_location.items()))
    print(f"{done} of {len(found)} failed mails imported; see erpmail mail failed for the rest")
    return 0 if done == len(found) else 1


def _archive_check(args: argparse.Namespace) -> int:
    from erpmail.core import inventory

    report = inventory.check()
    print(report)
    return 0 if report.clean else 1


def build_parser() -> argparse.ArgumentParser:
    """The command line, one sub-command per job."""
    parser = argparse.ArgumentParser(prog="erpmail", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    db_cmd = sub.add_parser("db", help="database schema")
    db_sub = db_cmd.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("migrate", help="apply the migrations in sql/ not yet applied").set_defaults(
        func=_migrate
    )
    seed_cmd = sub.add_parser("seed", help="insert deterministic demo data")
    seed_cmd.add_argument("--partners", type=int, default=200)
    seed_cmd.add_argument("--seed", type=int, default=1)
    seed_cmd.add_argument(
        "--as-of",
        type=date.fromisoformat,
        default=None,
        help="date the open items are spread back from (default today)",
    )
    seed_cmd.set_defaults(func=_seed)
    demo_cmd = sub.add_parser(
        "demo", help="a dunning run from seed data to .eml files, via Airflow"
    )
    demo_cmd.add_argument("--partners", type=int, default=200)
    demo_cmd.set_defaults(func=_demo)
    _account_parser(sub)
    _location_parser(sub)
    campaign_commands.add_parser(sub)
    mail_cmd = sub.add_parser("mail", help="received mail whose import failed")
    mail_sub = mail_cmd.add_subparsers(dest="mail_command", required=True)
    mail_sub.add_parser(
        "failed", help="list the mails kept raw because their import failed"
    ).set_defaults(func=_mail_failed)
    retry = mail_sub.add_parser("retry", help="import failed mails again from their stored .eml")
    retry.add_argument("ids", type=int, nargs="+", help="the mails' ids (erpmail mail failed)")
    retry.set_defaults(func=_mail_retry)
    archive_cmd = sub.add_parser("archive", help="the document store")
    archive_sub = archive_cmd.add_subparsers(dest="archive_command", required=True)
    archive_sub.add_parser(
        "check",
        help="report files no row names and rows whose file is missing (exit status 1 if any)",
    ).set_defaults(func=_archive_check)
    return parser


def _account_parser(sub: argparse._SubParsersAction) -> None:
    cmd = sub.add_parser("account", help="outgoing mail accounts (mail.accounts)")
    account_sub = cmd.add_subparsers(dest="account_command", required=True)
    add = account_sub.add_parser(
        "add", help="add an account sending through an Airflow SMTP connection"
    )
    add.add_argument("name", help="the account's name (outbox_dispatch's 'account')")
    add.add_argument("--conn-id", required=True, help="Airflow SMTP connection id")
    add.add_argument("--from", dest="from_address", required=True, help="sender address")
    add.add_argument("--display-name", default="", help="sender name shown to recipients")
    add.add_argument(
        "--sender",
        action="append",
        default=[],
        help="another address, or a whole domain, it may send for (repeatable)",
    )
    add.add_argument("--default", action="store_true", help="send for any address no account has")
    add.add_argument(
        "--send-interval",
        type=int,
        default=accounts.SAFE_INTERVAL_SECONDS,
        help="seconds between two mails (default 60; 0: no throttle, for a relay of your own)",
    )
    add.add_argument("--hourly-cap", type=int, default=None, help="at most this many mails an hour")
    add.add_argument("--sent-folder", default=None, help="IMAP folder a copy of each mail goes to")
    add.add_argument(
        "--sent-folder-conn-id", default=None, help="Airflow IMAP connection of the Sent folder"
    )
    add.add_argument(
        "--bounce-domain",
        default=None,
        help="give each mail its own envelope sender bounce+<token>@DOMAIN, so that bounces "
        "name the mail (the domain's mail must reach an imported mailbox)",
    )
    add.set_defaults(func=_account_add)
    account_sub.add_parser("list", help="list the accounts").set_defaults(func=_account_list)


def _location_parser(sub: argparse._SubParsersAction) -> None:
    cmd = sub.add_parser("location", help="IMAP import locations (mail.import_locations)")
    location_sub = cmd.add_subparsers(dest="location_command", required=True)
    add = location_sub.add_parser(
        "add", help="add a mailbox folder to import through an Airflow IMAP connection"
    )
    add.add_argument("name", help="the location's name")
    add.add_argument("--conn-id", required=True, help="Airflow IMAP connection id")
    add.add_argument("--folder", default="INBOX", help="folder to import (default INBOX)")
    add.add_argument(
        "--after-import",
        choices=AFTER_IMPORT,
        default="flag_seen",
        help="what happens to a mail on the server once stored (default flag_seen)",
    )
    add.add_argument("--move-to", default=None, help="target folder for --after-import move")
    add.add_argument(
        "--link-keyword",
        action="append",
        default=[],
        metavar="KEYWORD=TYPE",
        help=f"subject keyword before a number, TYPE one of {', '.join(linking.KEYWORD_TYPES)}"
        " (repeatable), e.g. relnr=partner",
    )
    add.add_argument(
        "--language", default=None, help="language of autoreply and alert (default de)"
    )
    add.add_argument("--notify", default=None, help="address the unlinked-mail alert goes to")
    add.add_argument(
        "--autoreply-account", default=None, help="send an autoreply through this account"
    )
    add.add_argument("--tickets", action="store_true", help="open a case per new conversation")
    add.add_argument("--ticket-queue", default="support", help="queue of those cases")
    add.add_argument("--archive-folder", default="mail", help="folder in the document store")
    add.add_argument("--archive-subfolder", default="", help="subfolder below it")
    add.add_argument(
        "--store-attachments", action="store_true", help="store attachments as files of their own"
    )
    add.add_argument(
        "--max-message-bytes",
        type=int,
        default=52428800,
        help="larger mail stays on the server (default 50 MB)",
    )
    add.add_argument(
        "--keep-days",
        type=int,
        default=None,
        help="retention: purge archived mail older than this (0: keep forever; never below "
        "the legal minimum)",
    )
    add.add_argument("--disabled", action="store_true", help="add it, but do not import yet")
    add.set_defaults(func=_location_add)
    location_sub.add_parser("list", help="list the locations").set_defaults(func=_location_list)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as exc:  # a value the command refuses, named by its field
        parser.exit(2, f"erpmail: error: {exc}\n")


if __name__ == "__main__":
    sys.exit(main())
