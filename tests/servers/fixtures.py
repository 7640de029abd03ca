"""pytest fixtures for real IMAP (Dovecot) and SMTP (aiosmtpd) servers with a test CA, and a
PostgreSQL cluster a test may crash.

Loaded with `pytest_plugins = ["tests.servers.fixtures"]`. All servers listen on 127.0.0.1
(`.host`) on free ports; their certificates name `localhost` and `127.0.0.1`. Trust only
`tls_ca.ca_cert` (same as each server's `.ca_file`), e.g. `tls_ca.client_context()`.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from erpmail.core import db
from tests.servers.dovecot import DOVECOT, Dovecot, ImapUser, start_dovecot
from tests.servers.postgres import OwnPostgres
from tests.servers.smtpd import SmtpServer, start_smtpd
from tests.servers.tlsca import CertSet, make_certs


@pytest.fixture(scope="session")
def tls_ca(tmp_path_factory: pytest.TempPathFactory) -> CertSet:
    """The test CA and server certificates as PEM paths (`ca_cert`, `cert`, `key`,
    `selfsigned_*`, `wronghost_*`); `client_context()` is a verifying context trusting the CA."""
    return make_certs(tmp_path_factory.mktemp("tls"))


def _dovecot(certs: CertSet, which: str = "", tls: bool = True) -> Iterator[Dovecot]:
    if os.geteuid() != 0 or not shutil.which(DOVECOT):
        pytest.skip("Dovecot tests need root and `dovecot` (apt-get install dovecot-imapd)")
    server = start_dovecot(certs, which, tls=tls)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def dovecot(tls_ca: CertSet) -> Iterator[Dovecot]:
    """Dovecot with the CA-signed certificate: IMAPS on `imaps_port`, plaintext with STARTTLS
    on `imap_port`; plaintext login is not refused. Shared by the session: take a fresh
    mailbox from `imap_user` or `dovecot.add_user()`, never from a fixed name."""
    yield from _dovecot(tls_ca)


@pytest.fixture
def imap_user(dovecot: Dovecot) -> ImapUser:
    """A new user on `dovecot` with an empty INBOX: `.name`, `.password`, `.host`,
    `.imaps_port`, `.imap_port`, `.ca_file`, `.server` (the `Dovecot`)."""
    return dovecot.add_user()


@pytest.fixture(scope="session")
def dovecot_selfsigned(tls_ca: CertSet) -> Iterator[Dovecot]:
    """Like `dovecot`, but presenting a self-signed certificate for localhost/127.0.0.1:
    a verifying client must refuse it on both ports. Add users with `.add_user()`."""
    yield from _dovecot(tls_ca, "selfsigned")


@pytest.fixture(scope="session")
def dovecot_wronghost(tls_ca: CertSet) -> Iterator[Dovecot]:
    """Like `dovecot`, but its CA-signed certificate names only wrong.example."""
    yield from _dovecot(tls_ca, "wronghost")


@pytest.fixture(scope="session")
def dovecot_no_starttls(tls_ca: CertSet) -> Iterator[Dovecot]:
    """Dovecot without TLS: `imap_port` does not offer STARTTLS, `imaps_port` is None.
    Plaintext login works, so a client that requires STARTTLS must refuse on its own."""
    yield from _dovecot(tls_ca, tls=False)


def _smtp(certs: CertSet, which: str = "", **options) -> Iterator[SmtpServer]:
    users = {"erpmail": secrets.token_urlsafe(12)}
    server = start_smtpd(certs, which, users=users, **options)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def smtp_server(tls_ca: CertSet) -> Iterator[SmtpServer]:
    """aiosmtpd offering STARTTLS (CA-signed) and AUTH PLAIN/LOGIN after TLS; MAIL needs AUTH.
    STARTTLS is not enforced, so `Received.tls` shows whether the client used it.
    `.users` {name: password}, `.credentials` (the one user), `.messages` (list of
    `Received`), `.wait_for(n)`, faults via `.fail()`, `.drop()`, `.delay()`; `.reset()`."""
    yield from _smtp(tls_ca, auth_required=True)


@pytest.fixture
def smtp_server_selfsigned(tls_ca: CertSet) -> Iterator[SmtpServer]:
    """Like `smtp_server`, but STARTTLS presents a self-signed certificate."""
    yield from _smtp(tls_ca, "selfsigned", auth_required=True)


@pytest.fixture
def smtp_server_wronghost(tls_ca: CertSet) -> Iterator[SmtpServer]:
    """Like `smtp_server`, but the CA-signed certificate names only wrong.example."""
    yield from _smtp(tls_ca, "wronghost", auth_required=True)


@pytest.fixture
def smtp_server_no_starttls(tls_ca: CertSet) -> Iterator[SmtpServer]:
    """aiosmtpd without STARTTLS. AUTH is offered in the clear but not required, so a client
    that requires STARTTLS or TLS for AUTH must refuse on its own."""
    yield from _smtp(tls_ca, mode="plain")


@pytest.fixture
def smtps_server(tls_ca: CertSet) -> Iterator[SmtpServer]:
    """aiosmtpd with implicit TLS (port-465 style, CA-signed) and required AUTH."""
    yield from _smtp(tls_ca, mode="smtps", auth_required=True)


@pytest.fixture
def smtpd_factory(tls_ca: CertSet) -> Iterator[Callable[..., SmtpServer]]:
    """`smtpd_factory(which="", mode=..., users=..., require_starttls=..., auth_required=...)`
    starts a custom server (see `start_smtpd`); all are stopped at teardown."""
    started: list[SmtpServer] = []

    def start(which: str = "", **options) -> SmtpServer:
        server = start_smtpd(tls_ca, which, **options)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[OwnPostgres]:
    """A migrated PostgreSQL cluster of this test's own, which it may crash and restart."""
    cluster = OwnPostgres(tmp_path / "pgdata")
    try:
        conn = db.connect(cluster.url)
        db.migrate(conn)
        conn.close()
        yield cluster
    finally:
        cluster.remove()
