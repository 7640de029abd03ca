"""ImapHook against Dovecot: verified IMAPS and STARTTLS, refusals that say why; the hook as
a context manager and on the Connections page."""

from __future__ import annotations

import json
import os

import pytest

from erpmail.inbound.imap import ImapError, ImapHook, ImapLoginError, ImapSecurityError

MAIL = b"From: a@example.org\r\nSubject: hi\r\nMessage-ID: <imap-1@example.org>\r\n\r\nbody\r\n"


def set_conn(
    monkeypatch: pytest.MonkeyPatch, conn_id: str, user, port, conn_type="imap", **extra
) -> None:
    """An Airflow connection for ``user`` as an ``AIRFLOW_CONN_*`` variable."""
    spec = {
        "conn_type": conn_type,
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


@pytest.mark.parametrize("security", ["tls", "ssl", "starttls"])
def test_self_signed_is_refused_and_said_so(dovecot_selfsigned, tls_ca, monkeypatch, security):
    user = dovecot_selfsigned.add_user()
    port = user.imap_port if security == "starttls" else user.imaps_port
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
    with pytest.raises(ImapSecurityError, match="plaintext IMAP is not supported") as err:
        ImapHook("imap_in").get_conn()
    assert "use tls or starttls" in str(err.value)


def test_unknown_mode_is_refused(imap_user, monkeypatch) -> None:
    set_conn(monkeypatch, "imap_in", imap_user, imap_user.imaps_port, security="plain")
    with pytest.raises(ImapSecurityError, match="'plain', expected tls or starttls"):
        ImapHook("imap_in").settings()


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


@pytest.mark.parametrize(
    ("port", "extra", "expected"),
    [
        (993, {}, ("tls", 993)),
        (143, {}, ("starttls", 143)),
        (10993, {}, ("tls", 10993)),
        (None, {}, ("tls", 993)),
        (None, {"security": "starttls"}, ("starttls", 143)),
        (None, {"security": "ssl"}, ("tls", 993)),  # what connections said before "tls"
    ],
)
def test_security_by_extra_or_port(monkeypatch, port, extra, expected) -> None:
    spec = {"conn_type": "imap", "host": "imap.example.com", "port": port, "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_IMAP_PORTS", json.dumps(spec))
    s = ImapHook("imap_ports").settings()
    assert (s.security, s.port, s.ca_file, s.timeout) == (*expected, None, 60.0)


def test_ssl_is_read_as_tls_against_the_server(imap_user, monkeypatch) -> None:
    set_conn(
        monkeypatch,
        "imap_in",
        imap_user,
        imap_user.imaps_port,
        security="ssl",
        ca_file=str(imap_user.ca_file),
    )
    assert ImapHook("imap_in").settings().security == "tls"
    with ImapHook("imap_in") as client:
        assert client.select_folder("INBOX")[b"EXISTS"] == 0


def test_hook_as_a_context_manager_logs_out(imap_user, monkeypatch) -> None:
    set_conn(
        monkeypatch, "imap_in", imap_user, imap_user.imaps_port, ca_file=str(imap_user.ca_file)
    )
    with ImapHook("imap_in") as client:
        client.append("INBOX", MAIL)
    assert client._imap.state == "LOGOUT"
    with ImapHook("imap_in").client() as again:
        again.select_folder("INBOX", readonly=True)
        assert len(again.search("ALL")) == 1


def test_test_connection_logs_in(imap_user, monkeypatch) -> None:
    set_conn(
        monkeypatch,
        "imap_page",
        imap_user,
        imap_user.imaps_port,
        conn_type="erpmail_imap",
        ca_file=str(imap_user.ca_file),
    )
    ok, message = ImapHook("imap_page").test_connection()
    assert ok, message
    assert (
        message
        == f"{imap_user.host}:{imap_user.imaps_port} over tls, logged in as {imap_user.name!r}"
    )


def test_the_connections_page_finds_the_hook_by_its_type(imap_user, monkeypatch) -> None:
    from airflow.models.connection import Connection

    set_conn(
        monkeypatch,
        "imap_page",
        imap_user,
        imap_user.imaps_port,
        conn_type="erpmail_imap",
        ca_file=str(imap_user.ca_file),
    )
    ok, message = Connection.get_connection_from_secrets("imap_page").test_connection()
    assert ok and "over tls" in message, message


def test_test_connection_says_why_never_the_password(imap_user, monkeypatch) -> None:
    set_conn(
        monkeypatch, "imap_in", imap_user, imap_user.imaps_port, ca_file=str(imap_user.ca_file)
    )
    spec = json.loads(os.environ["AIRFLOW_CONN_IMAP_IN"])
    spec["password"] = "wrong-Secret-123"
    monkeypatch.setenv("AIRFLOW_CONN_IMAP_IN", json.dumps(spec))
    ok, message = ImapHook("imap_in").test_connection()
    assert not ok and "refused the login" in message and "imap_in" in message
    assert "wrong-Secret-123" not in message
    # the login set to the password by mistake is hidden too
    spec["login"] = "wrong-Secret-123"
    monkeypatch.setenv("AIRFLOW_CONN_IMAP_IN", json.dumps(spec))
    ok, message = ImapHook("imap_in").test_connection()
    assert not ok and "***" in message and "wrong-Secret-123" not in message


def test_test_connection_of_a_refused_certificate(imap_user, monkeypatch) -> None:
    set_conn(monkeypatch, "imap_in", imap_user, imap_user.imaps_port)
    ok, message = ImapHook("imap_in").test_connection()
    assert not ok and "failed verification" in message
    assert imap_user.password not in message


def test_errors_share_one_base() -> None:
    assert issubclass(ImapSecurityError, ImapError) and issubclass(ImapLoginError, ImapError)
    with pytest.raises(ImapError, match="no_such_imap_conn"):
        ImapHook("no_such_imap_conn").settings()


def test_form_fields_of_the_connection_type() -> None:
    assert ImapHook.conn_type == "erpmail_imap" and ImapHook.conn_name_attr == "imap_conn_id"
    behaviour = ImapHook.get_ui_field_behaviour()
    assert behaviour["hidden_fields"] == ["schema"]
    assert behaviour["placeholders"] == {"port": "993 or 143", "security": "tls/starttls"}
