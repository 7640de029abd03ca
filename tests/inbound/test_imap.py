"""ImapHook against Dovecot: verified IMAPS and STARTTLS, refusals that say why."""

from __future__ import annotations

import json
import os

import pytest

from erpmail.inbound.imap import ImapHook, ImapLoginError, ImapSecurityError

MAIL = b"From: a@example.org\r\nSubject: hi\r\nMessage-ID: <imap-1@example.org>\r\n\r\nbody\r\n"


def set_conn(monkeypatch: pytest.MonkeyPatch, conn_id: str, user, port, **extra) -> None:
    """An Airflow connection for ``user`` as an ``AIRFLOW_CONN_*`` variable."""
    spec = {
        "conn_type": "imap",
        "host": user.host,
        "port": port,
        "login": user.name,
        "password": user.password,
        "extra": extra,
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(spec))


def test_imaps_with_ca_file_appends_and_reads(imap_user, monkeypatch) -> None:
    set_conn(
        monkeypatch, "imap_in", imap_user, imap_user.imaps_port, ca_file=str(imap_user.ca_file)
    )
    with ImapHook("imap_in").client() as client:
        client.append("INBOX", MAIL)
        client.select_folder("INBOX", readonly=True)
        uids = client.search("ALL")
        assert client.fetch(uids, ["BODY.PEEK[]"])[uids[0]][b"BODY[]"] == MAIL


def test_starttls_on_143_style_port(imap_user, monkeypatch) -> None:
    set_conn(
        monkeypatch,
        "imap_in",
        imap_user,
        imap_user.imap_port,
        security="starttls",
        ca_file=str(imap_user.ca_file),
    )
    with ImapHook("imap_in").client() as client:
        # STARTTLS happened: the socket is wrapped and verified
        assert client._imap.sock.getpeercert()["subject"]
        assert client.select_folder("INBOX")[b"EXISTS"] == 0


def test_system_store_refuses_the_test_ca(imap_user, monkeypatch) -> None:
    set_conn(monkeypatch, "imap_in", imap_user, imap_user.imaps_port)
    with pytest.raises(ImapSecurityError, match="failed verification"):
        ImapHook("imap_in").get_conn()


@pytest.mark.parametrize("security", ["ssl", "starttls"])
def test_self_signed_is_refused_and_said_so(dovecot_selfsigned, tls_ca, monkeypatch, security):
    user = dovecot_selfsigned.add_user()
    port = user.imaps_port if security == "ssl" else user.imap_port
    set_conn(
        monkeypatch, "imap_selfsigned", user, port, security=security, ca_file=str(tls_ca.ca_cert)
    )
    with pytest.raises(ImapSecurityError) as err:
        ImapHook("imap_selfsigned").get_conn()
    assert "self-signed" in str(err.value)
    assert "imap_selfsigned" in str(err.value)
    assert user.password not in str(err.value)


def test_starttls_required_but_not_offered_is_refused(dovecot_no_starttls, tls_ca, monkeypatch):
    user = dovecot_no_starttls.add_user()
    set_conn(
        monkeypatch,
        "imap_plain",
        user,
        user.imap_port,
        security="starttls",
        ca_file=str(tls_ca.ca_cert),
    )
    with pytest.raises(ImapSecurityError, match="does not offer STARTTLS") as err:
        ImapHook("imap_plain").get_conn()
    assert "imap_plain" in str(err.value) and user.password not in str(err.value)


def test_plaintext_mode_does_not_exist(imap_user, monkeypatch) -> None:
    set_conn(monkeypatch, "imap_in", imap_user, imap_user.imap_port, security="none")
    with pytest.raises(ImapSecurityError, match="plaintext IMAP is not supported"):
        ImapHook("imap_in").get_conn()


def test_wrong_password_names_connection_not_password(imap_user, monkeypatch) -> None:
    set_conn(
        monkeypatch, "imap_in", imap_user, imap_user.imaps_port, ca_file=str(imap_user.ca_file)
    )
    spec = json.loads(os.environ["AIRFLOW_CONN_IMAP_IN"])
    spec["password"] = "wrong-Secret-123"
    monkeypatch.setenv("AIRFLOW_CONN_IMAP_IN", json.dumps(spec))
    with pytest.raises(ImapLoginError) as err:
        ImapHook("imap_in").get_conn()
    assert "imap_in" in str(err.value) and "wrong-Secret-123" not in str(err.value)
