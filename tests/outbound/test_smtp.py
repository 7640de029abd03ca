"""SmtpHook against aiosmtpd: verified STARTTLS and implicit TLS, refusals, replies, drops;
the hook as a context manager and on the Connections page."""

from __future__ import annotations

import json

import pytest

from erpmail.outbound.smtp import SmtpAccountError, SmtpDropped, SmtpError, SmtpHook, classify
from tests.mailaccounts import smtp_connection
from tests.outboxmail import make_mime


def test_starttls_send_keeps_bcc_out_of_the_headers(monkeypatch, smtp_server):
    hook = smtp_connection(monkeypatch, smtp_server)
    mime = make_mime("s1", ["kunde@customer.example"])
    session = hook.session()
    try:
        delivery = session.send(
            "ar@demo.example", ["kunde@customer.example", "audit@demo.example"], mime
        )
    finally:
        session.close()
    assert delivery.outcome == "sent" and delivery.code == 250 and delivery.reply == "OK"
    assert delivery.accepted == ["kunde@customer.example", "audit@demo.example"]
    (got,) = smtp_server.messages
    assert got.tls and got.login == "erpmail"
    assert got.mail_from == "ar@demo.example"
    assert got.rcpt_tos == ["kunde@customer.example", "audit@demo.example"]
    assert got.data == mime
    assert b"audit@demo.example" not in got.data and b"\nBcc" not in got.data


def test_session_in_a_with_block_quits_on_exit(monkeypatch, smtp_server):
    hook = smtp_connection(monkeypatch, smtp_server)
    with hook.session() as session:
        delivery = session.send("ar@demo.example", ["k@c.example"], make_mime("w", ["k@c.example"]))
        assert session.alive
    assert delivery.outcome == "sent" and not session.alive
    with SmtpHook("smtp_test", account="Buchhaltung") as session:
        session.send("ar@demo.example", ["k@c.example"], make_mime("h", ["k@c.example"]))
    assert not session.alive
    assert [m.data for m in smtp_server.messages] == [
        make_mime("w", ["k@c.example"]),
        make_mime("h", ["k@c.example"]),
    ]


def test_session_is_reused_for_many_messages(monkeypatch, smtp_server):
    hook = smtp_connection(monkeypatch, smtp_server)
    session = hook.session()
    try:
        for i in range(3):
            session.send("ar@demo.example", ["k@c.example"], make_mime(f"r{i}", ["k@c.example"]))
    finally:
        session.close()
    peers = {m.peer for m in smtp_server.wait_for(3)}
    assert len(peers) == 1


def test_leading_dots_are_stuffed(monkeypatch, smtp_server):
    hook = smtp_connection(monkeypatch, smtp_server)
    mime = b"Message-ID: <d@x>\r\nSubject: dots\r\n\r\n.hidden line\r\n..two\r\nend"
    session = hook.session()
    try:
        session.send("ar@demo.example", ["k@c.example"], mime)
    finally:
        session.close()
    assert smtp_server.messages[0].data == mime + b"\r\n"


def test_implicit_tls(monkeypatch, smtps_server):
    hook = smtp_connection(monkeypatch, smtps_server, security="tls")
    session = hook.session()
    try:
        delivery = session.send("ar@demo.example", ["k@c.example"], make_mime("t", ["k@c.example"]))
    finally:
        session.close()
    assert delivery.outcome == "sent"
    assert smtps_server.messages[0].tls


def test_plain_only_when_the_connection_says_so(monkeypatch, smtp_server_no_starttls):
    server = smtp_server_no_starttls
    hook = smtp_connection(monkeypatch, server, security="none")
    session = hook.session()
    try:
        session.send("ar@demo.example", ["k@c.example"], make_mime("p", ["k@c.example"]))
    finally:
        session.close()
    assert len(server.messages) == 1 and not server.messages[0].tls


@pytest.mark.parametrize(
    ("fixture", "extra", "expected"),
    [
        ("smtp_server_no_starttls", {}, "does not offer STARTTLS"),
        ("smtp_server_selfsigned", {}, "certificate not trusted"),
        ("smtp_server_wronghost", {}, "certificate not trusted"),
        ("smtp_server", {"ca_file": None}, "certificate not trusted"),  # system store only
        ("smtp_server", {"security": "bogus"}, "expected starttls, tls or none"),
    ],
)
def test_refusals_name_the_account_and_send_nothing(monkeypatch, request, fixture, extra, expected):
    server = request.getfixturevalue(fixture)
    hook = smtp_connection(monkeypatch, server, **extra)
    if extra.get("ca_file", "") is None:
        monkeypatch.setenv("SSL_CERT_FILE", "/nonexistent")  # keep the test CA out of the store
    with pytest.raises(SmtpAccountError, match=expected) as e:
        hook.session()
    assert "Buchhaltung" in str(e.value)
    if server.users:
        assert server.credentials[1] not in str(e.value)
    assert server.messages == []


def test_failed_login_names_account_never_password(monkeypatch, smtp_server):
    hook = smtp_connection(monkeypatch, smtp_server, password="Geheim-1234")
    with pytest.raises(SmtpAccountError, match="login as 'erpmail' refused: 535") as e:
        hook.session()
    assert "Buchhaltung" in str(e.value) and "Geheim-1234" not in str(e.value)


def test_login_equal_to_the_password_is_not_shown_either(monkeypatch, smtp_server):
    hook = smtp_connection(monkeypatch, smtp_server, login="Geheim-1234", password="Geheim-1234")
    with pytest.raises(SmtpAccountError, match=r"login as '\*\*\*' refused: 535") as e:
        hook.session()
    assert "Geheim-1234" not in str(e.value)


def test_errors_share_one_base():
    assert issubclass(SmtpAccountError, SmtpError) and issubclass(SmtpDropped, SmtpError)


def test_unknown_connection_is_an_account_error():
    with pytest.raises(SmtpAccountError, match="Buchhaltung"):
        SmtpHook("no_such_conn_xyz", account="Buchhaltung").session()


@pytest.mark.parametrize("stage", ["MAIL", "RCPT", "DATA"])
@pytest.mark.parametrize("reply", ["451 4.3.0 try again later", "550 5.7.1 not allowed"])
def test_replies_are_classified_and_kept(monkeypatch, smtp_server, stage, reply):
    hook = smtp_connection(monkeypatch, smtp_server)
    smtp_server.fail(stage, reply, times=1)
    session = hook.session()
    try:
        delivery = session.send("ar@demo.example", ["k@c.example"], make_mime("f", ["k@c.example"]))
        # the session survives the refusal and sends the next message
        after = session.send("ar@demo.example", ["k@c.example"], make_mime("g", ["k@c.example"]))
    finally:
        session.close()
    code, text = reply.split(" ", 1)
    assert (delivery.code, delivery.reply, delivery.stage) == (int(code), text, stage)
    assert delivery.outcome == ("deferred" if code.startswith("4") else "failed")
    assert after.outcome == "sent"
    assert len(smtp_server.messages) == 1


def test_partial_refusal_reports_each_recipient(monkeypatch, smtp_server):
    hook = smtp_connection(monkeypatch, smtp_server)
    smtp_server.fail("RCPT", "550 5.1.1 unknown user", rcpt="gone@c.example")
    session = hook.session()
    try:
        delivery = session.send(
            "ar@demo.example", ["k@c.example", "gone@c.example"], make_mime("pr", ["k@c.example"])
        )
    finally:
        session.close()
    assert delivery.outcome == "sent"
    assert delivery.recipients == {
        "k@c.example": (250, "OK"),
        "gone@c.example": (550, "5.1.1 unknown user"),
    }
    assert smtp_server.messages[0].rcpt_tos == ["k@c.example"]


@pytest.mark.parametrize(("when", "recorded"), [("before_dot", 0), ("after_dot", 1)])
def test_drop_inside_data(monkeypatch, smtp_server, when, recorded):
    hook = smtp_connection(monkeypatch, smtp_server)
    smtp_server.drop(when, times=1)
    session = hook.session()
    with pytest.raises(SmtpDropped) as e:
        session.send("ar@demo.example", ["k@c.example"], make_mime("d", ["k@c.example"]))
    assert not session.alive
    session.close()
    assert len(smtp_server.messages) == recorded
    if recorded:
        # the whole message left us and no reply came: it may have been accepted
        assert e.value.after_dot


def test_reply_timeout_is_a_drop(monkeypatch, smtp_server):
    hook = smtp_connection(monkeypatch, smtp_server, timeout=0.5)
    smtp_server.delay("MAIL", 3, times=1)
    session = hook.session()
    with pytest.raises(SmtpDropped) as e:
        session.send("ar@demo.example", ["k@c.example"], make_mime("to", ["k@c.example"]))
    session.close()
    assert not e.value.after_dot and "timed out" in str(e.value)


def test_classify():
    assert [classify(c) for c in (250, 421, 452, 550, 554, -1)] == [
        "sent",
        "deferred",
        "deferred",
        "failed",
        "failed",
        "deferred",
    ]


@pytest.mark.parametrize("conn_type", ["smtp", "erpmail_smtp"])
def test_settings_read_the_extras_of_either_connection_type(monkeypatch, smtp_server, conn_type):
    hook = smtp_connection(monkeypatch, smtp_server, conn_type=conn_type, timeout=7)
    s = hook.settings()
    assert (s.host, s.port, s.security) == (smtp_server.host, smtp_server.port, "starttls")
    assert (s.ca_file, s.timeout) == (str(smtp_server.ca_file), 7.0)


@pytest.mark.parametrize(
    ("port", "extra", "expected"),
    [
        (465, {}, ("tls", 465)),
        (587, {}, ("starttls", 587)),
        (2525, {}, ("starttls", 2525)),
        (None, {}, ("starttls", 587)),
        (None, {"security": "TLS"}, ("tls", 465)),
        (465, {"security": "ssl"}, ("tls", 465)),  # the word other mail software uses
        (25, {"security": "none"}, ("none", 25)),
    ],
)
def test_security_by_extra_or_port(monkeypatch, port, extra, expected):
    conn = {"conn_type": "smtp", "host": "smtp.example.com", "port": port, "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_PORTS", json.dumps(conn))
    s = SmtpHook("smtp_ports").settings()
    assert (s.security, s.port) == expected


def test_test_connection_logs_in_and_sends_nothing(monkeypatch, smtp_server):
    hook = smtp_connection(monkeypatch, smtp_server, conn_type="erpmail_smtp")
    ok, message = hook.test_connection()
    assert ok, message
    assert message == (
        f"{smtp_server.host}:{smtp_server.port} over starttls, logged in as 'erpmail': "
        "ready to send"
    )
    assert smtp_server.messages == []


def test_the_connections_page_finds_the_hook_by_its_type(monkeypatch, smtp_server):
    from airflow.models.connection import Connection

    smtp_connection(monkeypatch, smtp_server, "smtp_page", conn_type="erpmail_smtp")
    ok, message = Connection.get_connection_from_secrets("smtp_page").test_connection()
    assert ok and "over starttls" in message, message


@pytest.mark.parametrize(
    ("fixture", "password", "expected"),
    [
        ("smtp_server", "Geheim-1234", "login as 'erpmail' refused: 535"),
        ("smtp_server_selfsigned", None, "certificate not trusted"),
        ("smtp_server_no_starttls", None, "does not offer STARTTLS"),
    ],
)
def test_test_connection_says_why_never_the_password(
    monkeypatch, request, fixture, password, expected
):
    server = request.getfixturevalue(fixture)
    hook = smtp_connection(monkeypatch, server, password=password, conn_type="erpmail_smtp")
    ok, message = hook.test_connection()
    assert not ok and expected in message, message
    secret = password or (server.credentials[1] if server.users else None)
    assert secret is None or secret not in message


def test_test_connection_of_an_unknown_connection():
    ok, message = SmtpHook("no_such_conn_xyz").test_connection()
    assert not ok and "no_such_conn_xyz" in message


def test_form_fields_of_the_connection_type():
    assert SmtpHook.conn_type == "erpmail_smtp" and SmtpHook.conn_name_attr == "smtp_conn_id"
    behaviour = SmtpHook.get_ui_field_behaviour()
    assert behaviour["hidden_fields"] == ["schema"]
    assert behaviour["placeholders"]["security"] == "starttls/tls/none"


def test_a_server_echoing_the_auth_data_never_gets_it_stored_or_logged(
    monkeypatch, smtp_server, caplog
):
    import base64

    monkeypatch.setattr(smtp_server, "echo_auth", True)
    hook = smtp_connection(monkeypatch, smtp_server, password="Geheim-1234")
    with pytest.raises(SmtpAccountError, match="535") as e:
        hook.session()
    login = smtp_server.credentials[0]
    echoed = base64.b64encode(f"\0{login}\0Geheim-1234".encode()).decode()
    assert "Authentication failed" in str(e.value) and "***" in str(e.value)
    assert echoed not in str(e.value) and "Geheim-1234" not in str(e.value)
    assert echoed not in caplog.text
