"""Outgoing mail accounts (``mail.accounts``): sender selection and the per-account throttle.

An account names an Airflow connection (host, port, login, password); the row holds only
what is not secret. The throttle state, the next allowed send time, lives in
``mail.accounts.next_send_at`` so it holds across dispatcher runs and concurrent workers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

# The ERPs warn that sending faster than one mail a minute gets a sender marked as spam.
SAFE_INTERVAL_SECONDS = 60

INSERT_ACCOUNT = """
INSERT INTO mail.accounts (name, conn_id, from_address, display_name, sender_addresses,
    is_default, send_interval_seconds, hourly_cap, sent_folder_conn_id, sent_folder, demo_only,
    bounce_domain)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
RETURNING id, name, conn_id, from_address, display_name, sender_addresses, is_default,
    send_interval_seconds, hourly_cap, sent_folder_conn_id, sent_folder, demo_only, bounce_domain"""
ACCOUNT_BY_ID = """
SELECT id, name, conn_id, from_address, display_name, sender_addresses, is_default,
    send_interval_seconds, hourly_cap, sent_folder_conn_id, sent_folder, demo_only, bounce_domain
FROM mail.accounts WHERE id = %s"""
ACCOUNT_BY_NAME = """
SELECT id, name, conn_id, from_address, display_name, sender_addresses, is_default,
    send_interval_seconds, hourly_cap, sent_folder_conn_id, sent_folder, demo_only, bounce_domain
FROM mail.accounts WHERE name = %s"""
ALL_ACCOUNTS = """
SELECT id, name, conn_id, from_address, display_name, sender_addresses, is_default,
    send_interval_seconds, hourly_cap, sent_folder_conn_id, sent_folder, demo_only, bounce_domain
FROM mail.accounts ORDER BY id"""
# Exact address first (from_address or a listed address), then a listed domain, then the
# default; ties go to the lowest id so the choice is stable.
SELECT_FOR_ADDRESS = """
SELECT id, name, conn_id, from_address, display_name, sender_addresses, is_default,
    send_interval_seconds, hourly_cap, sent_folder_conn_id, sent_folder, demo_only, bounce_domain,
       CASE WHEN lower(from_address) = %(addr)s
                 OR %(addr)s = ANY (SELECT lower(a) FROM unnest(sender_addresses) a) THEN 0
            WHEN %(domain)s = ANY (SELECT lower(a) FROM unnest(sender_addresses) a) THEN 1
            ELSE 2 END AS rank
FROM mail.accounts
WHERE lower(from_address) = %(addr)s
   OR EXISTS (SELECT 1 FROM unnest(sender_addresses) a WHERE lower(a) IN (%(addr)s, %(domain)s))
   OR is_default
ORDER BY rank, id
LIMIT 1"""

# The throttle, taken in the claiming transaction: the row lock serialises claimers of one
# account across processes. "sending" counts messages another worker is sending right now;
# with an interval the account sends one at a time, so the gap holds from one acceptance to
# the next claim as well.
LOCK_THROTTLE = """
SELECT send_interval_seconds, hourly_cap,
       CASE WHEN next_send_at > clock_timestamp()
            THEN extract(epoch FROM next_send_at - clock_timestamp())::float8 ELSE 0 END
            AS interval_wait,
       (SELECT count(*) FROM mail.outbox o
         WHERE o.account_id = a.id AND o.status = 'sending') AS sending,
       (SELECT count(*) FROM mail.outbox o
         WHERE o.account_id = a.id AND o.sent_at > clock_timestamp() - interval '1 hour') AS sent_last_hour,
       (SELECT extract(epoch FROM min(o.sent_at) + interval '1 hour' - clock_timestamp())::float8
         FROM mail.outbox o
         WHERE o.account_id = a.id AND o.sent_at > clock_timestamp() - interval '1 hour') AS cap_wait
FROM mail.accounts a WHERE a.id = %s
FOR UPDATE"""
ADVANCE_NEXT_SEND = """
UPDATE mail.accounts
SET next_send_at = greatest(next_send_at, clock_timestamp() + make_interval(secs => send_interval_seconds))
WHERE id = %s AND send_interval_seconds > 0"""


@dataclass(frozen=True)
class Account:
    """One outgoing account; credentials stay in the Airflow connection ``conn_id``."""

    id: int
    name: str
    conn_id: str
    from_address: str
    display_name: str = ""
    sender_addresses: tuple[str, ...] = ()
    is_default: bool = False
    send_interval_seconds: int = SAFE_INTERVAL_SECONDS
    hourly_cap: int | None = None
    sent_folder_conn_id: str | None = None
    sent_folder: str | None = None
    demo_only: bool = False
    bounce_domain: str | None = None  # VERP envelope senders there; None: the from address

    @property
    def throttled(self) -> bool:
        """True when sends must be spaced or counted (interval or hourly cap set)."""
        return self.send_interval_seconds > 0 or self.hourly_cap is not None


@dataclass(frozen=True)
class Slots:
    """What the throttle grants now: ``granted`` messages, else seconds until the next chance
    (None: no limit applies, or the wait is unknown)."""

    granted: int
    wait_seconds: float | None = None


def _account(row: tuple) -> Account:
    values = list(row[:13])
    values[5] = tuple(values[5] or ())
    return Account(*values)


def warn_if_fast(account: Account) -> bool:
    """Log a warning when the account sends more often than once a minute; True if so."""
    if not account.demo_only and 0 <= account.send_interval_seconds < SAFE_INTERVAL_SECONDS:
        log.warning(
            "account %r sends every %d s (0: no throttle), under %d s: mail providers may "
            "treat it as spam; only a relay of your own should go that fast",
            account.name,
            account.send_interval_seconds,
            SAFE_INTERVAL_SECONDS,
        )
        return True
    return False


def create_account(
    cur,
    *,
    name: str,
    conn_id: str,
    from_address: str,
    display_name: str = "",
    sender_addresses: tuple[str, ...] | list[str] = (),
    is_default: bool = False,
    send_interval_seconds: int = SAFE_INTERVAL_SECONDS,
    hourly_cap: int | None = None,
    sent_folder_conn_id: str | None = None,
    sent_folder: str | None = None,
    demo_only: bool = False,
    bounce_domain: str | None = None,
) -> Account:
    """Insert an account row and return it; warns when the interval is under 60 s.

    ``demo_only`` marks an account that only ever talks to a local sink; ``bounce_domain``
    gives each message an envelope sender of its own there (``bounce+<token>@``), so that a
    bounce names the message it is for.
    """
    for value, field in ((name, "name"), (from_address, "from_address")):
        if not value or any(c in value for c in "\r\n"):
            raise ValueError(f"account {name!r}: {field} is empty or holds a line break")
    cur.execute(
        INSERT_ACCOUNT,
        (
            name,
            conn_id,
            from_address,
            display_name,
            list(sender_addresses),
            is_default,
            send_interval_seconds,
            hourly_cap,
            sent_folder_conn_id,
            sent_folder,
            demo_only,
            bounce_domain,
        ),
    )
    account = _account(cur.fetchone())
    warn_if_fast(account)
    return account


def get_account(cur, account_id: int) -> Account:
    """The account with this id; KeyError if there is none."""
    cur.execute(ACCOUNT_BY_ID, (account_id,))
    row = cur.fetchone()
    if row is None:
        raise KeyError(f"no mail account with id {account_id}")
    return _account(row)


def account_by_name(cur, name: str) -> Account:
    """The account with this name; KeyError if there is none."""
    cur.execute(ACCOUNT_BY_NAME, (name,))
    row = cur.fetchone()
    if row is None:
        raise KeyError(f"no mail account named {name!r}")
    return _account(row)


def list_accounts(cur) -> list[Account]:
    """All accounts by id."""
    cur.execute(ALL_ACCOUNTS)
    return [_account(r) for r in cur.fetchall()]


def select_account(cur, from_address: str) -> Account:
    """The account to send as ``from_address``: exact address > its domain > the default.

    Raises LookupError naming the address when no account fits and there is no default.
    """
    addr = from_address.strip().lower()
    domain = addr.rpartition("@")[2]
    if not domain or "@" not in addr:
        raise ValueError(f"from address {from_address!r} is not an e-mail address")
    cur.execute(SELECT_FOR_ADDRESS, {"addr": addr, "domain": domain})
    row = cur.fetchone()
    if row is None:
        raise LookupError(f"no mail account may send as {from_address!r} and none is the default")
    return _account(row)


def take_slots(cur, account: Account, wanted: int) -> Slots:
    """Grant up to ``wanted`` sends for the account now, inside the caller's transaction.

    Locks the account row until the caller commits. With an interval, at most one message
    and only when none is being sent; ``next_send_at`` moves one interval on. With an
    hourly cap, no more than the cap in any hour. Without either, everything is granted.
    """
    if not account.throttled:
        return Slots(wanted)
    cur.execute(LOCK_THROTTLE, (account.id,))
    interval, cap, interval_wait, sending, sent_last_hour, cap_wait = cur.fetchone()
    granted, wait = wanted, None
    if cap is not None:
        granted = min(granted, max(cap - sent_last_hour - sending, 0))
        if not granted:
            wait = cap_wait
    if interval > 0 and granted:
        if interval_wait > 0:
            granted, wait = 0, interval_wait
        elif sending:
            # another worker is mid-send; its mark moves next_send_at on
            granted, wait = 0, min(float(interval), 1.0)
        else:
            granted = 1
    if granted and interval > 0:
        cur.execute(ADVANCE_NEXT_SEND, (account.id,))
    return Slots(granted, wait)
