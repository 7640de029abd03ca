"""Dovecot fixtures: verified IMAPS and STARTTLS work, bad certificates are refused."""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
from imapclient import IMAPClient

from tests.servers.dovecot import Dovecot, ImapUser, start_dovecot
from tests.servers.tlsca import CertSet

MAIL = (
    b"From: Kunde <kunde@example.org>\r\n"
    b"To: Buchhaltung <fibu@example.com>\r\n"
    b"Subject: =?utf-8?q?R=C3=BCckfrage_Rechnung_0042?=\r\n"
    b"Message-ID: <dovecot-test-1@example.org>\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Gr\xc3\xbc\xc3\x9fe,\r\n.a line starting with a dot\r\n\r\n"
)


def _imaps(server: Dovecot, ctx: ssl.SSLContext) -> IMAPClient:
    return IMAPClient(server.host, port=server.imaps_port, ssl=True, ssl_context=ctx, timeout=10)


def _starttls(server: Dovecot, ctx: ssl.SSLContext) -> IMAPClient:
    client = IMAPClient(server.host, port=server.imap_port, ssl=False, timeout=10)
    client.starttls(ctx)
    return client


def _append_and_fetch(client: IMAPClient, user: ImapUser) -> None:
    client.login(user.name, user.password)
    reply = client.append("INBOX", MAIL)
    uid = int(reply.split(b"APPENDUID ")[1].split()[1].rstrip(b"]"))
    client.select_folder("INBOX")
    fetched = client.fetch([uid], ["BODY.PEEK[]", "FLAGS"])
    assert fetched[uid][b"BODY[]"] == MAIL
    assert b"\\Seen" not in fetched[uid][b"FLAGS"]
    client.logout()


def test_imaps_append_then_fetch_by_uid_verified(imap_user: ImapUser) -> None:
    ctx = ssl.create_default_context(cafile=str(imap_user.ca_file))
    _append_and_fetch(_imaps(imap_user.server, ctx), imap_user)


def test_starttls_on_plain_port_verified(imap_user: ImapUser) -> None:
    ctx = ssl.create_default_context(cafile=str(imap_user.ca_file))
    client = IMAPClient(imap_user.host, port=imap_user.imap_port, ssl=False, timeout=10)
    assert b"STARTTLS" in client.capabilities()
    client.starttls(ctx)
    _append_and_fetch(client, imap_user)


def test_fresh_users_have_separate_empty_mailboxes(dovecot: Dovecot, tls_ca: CertSet) -> None:
    a, b = dovecot.add_user(), dovecot.add_user()
    with _imaps(dovecot, tls_ca.client_context()) as client:
        client.login(a.name, a.password)
        client.append("INBOX", MAIL)
    with _imaps(dovecot, tls_ca.client_context()) as client:
        client.login(b.name, b.password)
        assert client.select_folder("INBOX")[b"EXISTS"] == 0


def test_reset_user_empties_the_mailbox_with_new_uidvalidity(
    imap_user: ImapUser, tls_ca: CertSet
) -> None:
    with _imaps(imap_user.server, tls_ca.client_context()) as client:
        client.login(imap_user.name, imap_user.password)
        client.append("INBOX", MAIL)
        before = client.select_folder("INBOX")
    imap_user.server.reset_user(imap_user.name)
    with _imaps(imap_user.server, tls_ca.client_context()) as client:
        client.login(imap_user.name, imap_user.password)
        after = client.select_folder("INBOX")
    assert before[b"EXISTS"] == 1
    assert after[b"EXISTS"] == 0
    assert after[b"UIDVALIDITY"] != before[b"UIDVALIDITY"]


def test_wrong_password_is_refused(imap_user: ImapUser, tls_ca: CertSet) -> None:
    with _imaps(imap_user.server, tls_ca.client_context()) as client:
        with pytest.raises(IMAPClient.Error):
            client.login(imap_user.name, imap_user.password + "x")


@pytest.mark.parametrize("connect", [_imaps, _starttls], ids=["imaps", "starttls"])
def test_selfsigned_is_refused(
    dovecot_selfsigned: Dovecot,
    tls_ca: CertSet,
    connect: Callable[[Dovecot, ssl.SSLContext], IMAPClient],
) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="self.signed"):
        connect(dovecot_selfsigned, tls_ca.client_context())


@pytest.mark.parametrize("connect", [_imaps, _starttls], ids=["imaps", "starttls"])
def test_wrong_host_is_refused(
    dovecot_wronghost: Dovecot,
    tls_ca: CertSet,
    connect: Callable[[Dovecot, ssl.SSLContext], IMAPClient],
) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="match"):
        connect(dovecot_wronghost, tls_ca.client_context())


def test_no_starttls_instance_offers_none(dovecot_no_starttls: Dovecot) -> None:
    user = dovecot_no_starttls.add_user()
    assert dovecot_no_starttls.imaps_port is None
    with IMAPClient(user.host, port=user.imap_port, ssl=False, timeout=10) as client:
        assert b"STARTTLS" not in client.capabilities()
        client.login(user.name, user.password)  # the instance itself works


def _children(pid: int) -> set[int]:
    """All descendants of `pid`, from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


def test_stop_leaves_no_process_or_directory(tls_ca: CertSet, dovecot: Dovecot) -> None:
    server = start_dovecot(tls_ca)
    master = server._proc.pid
    family = _children(master) | {master}
    assert len(family) > 1  # log, config, anvil, imap-login ... were running
    server.stop()
    alive = {p for p in family if os.path.exists(f"/proc/{p}") and _not_zombie(p)}
    assert alive == set()
    assert not server.root.exists()


def _not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
