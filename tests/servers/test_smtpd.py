"""aiosmtpd fixtures: verified TLS, AUTH, the message record, and each injected fault."""

from __future__ import annotations

import smtplib
import ssl

import pytest

from tests.servers.smtpd import SmtpServer
from tests.servers.tlsca import CertSet

SENDER = "mahnwesen@example.com"
RCPT = "kunde@example.org"
MAIL = (
    b"From: Mahnwesen <mahnwesen@example.com>\r\n"
    b"To: kunde@example.org\r\n"
    b"Subject: Zahlungserinnerung\r\n"
    b"Message-ID: <smtpd-test-1@example.com>\r\n"
    b"\r\n"
    b"Sehr geehrte Damen und Herren,\r\n"
    b".this line needs dot-stuffing on the wire\r\n"
    b"\r\n"
)


def _session(server: SmtpServer, ctx: ssl.SSLContext, timeout: float = 10) -> smtplib.SMTP:
    """A STARTTLS + AUTH session, the way erpmail's transport is expected to open one."""
    client = smtplib.SMTP(server.host, server.port, timeout=timeout)
    client.starttls(context=ctx)
    client.login(*server.credentials)
    return client


def test_starttls_auth_send_is_recorded_exactly(smtp_server: SmtpServer, tls_ca: CertSet) -> None:
    ctx = ssl.create_default_context(cafile=str(smtp_server.ca_file))
    with _session(smtp_server, ctx) as client:
        assert client.sendmail(SENDER, [RCPT, "zweite@example.org"], MAIL) == {}
    (msg,) = smtp_server.messages
    assert msg.data == MAIL
    assert (msg.mail_from, msg.rcpt_tos) == (SENDER, [RCPT, "zweite@example.org"])
    assert msg.login == smtp_server.credentials[0]
    assert msg.tls is True
    assert msg.peer[0] == "127.0.0.1"


def test_many_messages_over_one_connection(smtp_server: SmtpServer, tls_ca: CertSet) -> None:
    attachment = b"A" * 76 + b"\r\n"
    bodies = [MAIL + b"%d\r\n" % i + attachment * 400 for i in range(50)]
    with _session(smtp_server, tls_ca.client_context()) as client:
        for body in bodies:
            client.sendmail(SENDER, [RCPT], body)
    assert [m.data for m in smtp_server.wait_for(50)] == bodies


def test_smtps_implicit_tls(smtps_server: SmtpServer, tls_ca: CertSet) -> None:
    with smtplib.SMTP_SSL(
        smtps_server.host, smtps_server.port, context=tls_ca.client_context(), timeout=10
    ) as client:
        client.login(*smtps_server.credentials)
        client.sendmail(SENDER, [RCPT], MAIL)
    assert [m.data for m in smtps_server.messages] == [MAIL]


def test_selfsigned_is_refused(smtp_server_selfsigned: SmtpServer, tls_ca: CertSet) -> None:
    client = smtplib.SMTP(smtp_server_selfsigned.host, smtp_server_selfsigned.port, timeout=10)
    with pytest.raises(ssl.SSLCertVerificationError, match="self.signed"):
        client.starttls(context=tls_ca.client_context())


def test_wrong_host_is_refused(smtp_server_wronghost: SmtpServer, tls_ca: CertSet) -> None:
    client = smtplib.SMTP(smtp_server_wronghost.host, smtp_server_wronghost.port, timeout=10)
    with pytest.raises(ssl.SSLCertVerificationError, match="match"):
        client.starttls(context=tls_ca.client_context())


def test_no_starttls_offered(smtp_server_no_starttls: SmtpServer, tls_ca: CertSet) -> None:
    with smtplib.SMTP(smtp_server_no_starttls.host, smtp_server_no_starttls.port) as client:
        client.ehlo()
        assert not client.has_extn("starttls")
        with pytest.raises(smtplib.SMTPNotSupportedError):
            client.starttls(context=tls_ca.client_context())


def test_without_tls_the_record_says_so(smtp_server_no_starttls: SmtpServer) -> None:
    with smtplib.SMTP(smtp_server_no_starttls.host, smtp_server_no_starttls.port) as client:
        client.sendmail(SENDER, [RCPT], MAIL)
    assert [(m.data, m.tls) for m in smtp_server_no_starttls.messages] == [(MAIL, False)]


def test_require_starttls(smtpd_factory, tls_ca: CertSet) -> None:
    server = smtpd_factory(require_starttls=True)
    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            client.sendmail(SENDER, [RCPT], MAIL)
    assert refused.value.smtp_code == 530
    assert server.messages == []


def test_auth_required_and_checked(smtp_server: SmtpServer, tls_ca: CertSet) -> None:
    with smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=10) as client:
        client.starttls(context=tls_ca.client_context())
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            client.sendmail(SENDER, [RCPT], MAIL)
        assert refused.value.smtp_code == 530
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login(smtp_server.credentials[0], "wrong")
    assert smtp_server.messages == []


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_auth_mechanisms(smtp_server: SmtpServer, tls_ca: CertSet, mechanism: str) -> None:
    name, password = smtp_server.credentials
    with smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=10) as client:
        client.starttls(context=tls_ca.client_context())
        client.ehlo()
        client.user, client.password = name, password
        auth = getattr(client, f"auth_{mechanism.lower()}")
        assert client.auth(mechanism, auth, initial_response_ok=False)[0] == 235
        client.sendmail(SENDER, [RCPT], MAIL)
    assert [m.login for m in smtp_server.messages] == [name]


@pytest.mark.parametrize(
    ("stage", "reply", "error"),
    [
        ("MAIL", "550 5.7.1 sender rejected", smtplib.SMTPSenderRefused),
        ("RCPT", "451 4.3.0 try later", smtplib.SMTPRecipientsRefused),
        ("DATA", "554 5.6.0 content rejected", smtplib.SMTPDataError),
    ],
)
def test_reply_fault(
    smtp_server: SmtpServer, tls_ca: CertSet, stage: str, reply: str, error: type
) -> None:
    smtp_server.fail(stage, reply)
    with _session(smtp_server, tls_ca.client_context()) as client:
        with pytest.raises(error) as raised:
            client.sendmail(SENDER, [RCPT], MAIL)
    if error is smtplib.SMTPRecipientsRefused:
        assert raised.value.recipients == {RCPT: (451, b"4.3.0 try later")}
    else:
        assert (raised.value.smtp_code, raised.value.smtp_error) == (
            int(reply[:3]),
            reply[4:].encode(),
        )
    assert smtp_server.messages == []


def test_rcpt_fault_for_one_recipient(smtp_server: SmtpServer, tls_ca: CertSet) -> None:
    smtp_server.fail("RCPT", "550 5.1.1 no such user", rcpt="weg@example.org")
    with _session(smtp_server, tls_ca.client_context()) as client:
        refused = client.sendmail(SENDER, [RCPT, "weg@example.org"], MAIL)
    assert refused == {"weg@example.org": (550, b"5.1.1 no such user")}
    assert [m.rcpt_tos for m in smtp_server.messages] == [[RCPT]]


def test_fault_for_next_n_times_then_reset(smtp_server: SmtpServer, tls_ca: CertSet) -> None:
    smtp_server.fail("MAIL", "451 4.3.0 try later", times=2)
    with _session(smtp_server, tls_ca.client_context()) as client:
        codes = []
        for _ in range(3):
            try:
                client.sendmail(SENDER, [RCPT], MAIL)
                codes.append(250)
            except smtplib.SMTPSenderRefused as e:
                codes.append(e.smtp_code)
        assert codes == [451, 451, 250]
        smtp_server.fail("DATA", "554 no")
        smtp_server.reset()
        client.sendmail(SENDER, [RCPT], MAIL)
    assert len(smtp_server.messages) == 1  # reset dropped the first and the DATA fault


def test_drop_before_final_dot_records_nothing(smtp_server: SmtpServer, tls_ca: CertSet) -> None:
    smtp_server.drop("before_dot")
    with _session(smtp_server, tls_ca.client_context()) as client:
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.sendmail(SENDER, [RCPT], MAIL)
    assert smtp_server.messages == []


def test_drop_after_final_dot_records_but_never_replies(
    smtp_server: SmtpServer, tls_ca: CertSet
) -> None:
    smtp_server.drop("after_dot", times=1)
    with _session(smtp_server, tls_ca.client_context()) as client:
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.sendmail(SENDER, [RCPT], MAIL)
    assert [m.data for m in smtp_server.messages] == [MAIL]
    with _session(smtp_server, tls_ca.client_context()) as client:  # times=1: next one is fine
        client.sendmail(SENDER, [RCPT], MAIL)
    assert len(smtp_server.messages) == 2


@pytest.mark.parametrize("stage", ["MAIL", "RCPT", "DATA"])
def test_slow_reply_outlasts_client_timeout(
    smtp_server: SmtpServer, tls_ca: CertSet, stage: str
) -> None:
    smtp_server.delay(stage, 3)
    with _session(smtp_server, tls_ca.client_context(), timeout=10) as client:
        client.sock.settimeout(0.3)
        with pytest.raises(smtplib.SMTPServerDisconnected, match="timed out"):
            client.sendmail(SENDER, [RCPT], MAIL)


def test_slow_reply_within_client_timeout_delivers(
    smtp_server: SmtpServer, tls_ca: CertSet
) -> None:
    smtp_server.delay("DATA", 0.2)
    with _session(smtp_server, tls_ca.client_context(), timeout=10) as client:
        client.sendmail(SENDER, [RCPT], MAIL)
    assert [m.data for m in smtp_server.messages] == [MAIL]
