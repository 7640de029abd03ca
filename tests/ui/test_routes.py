"""Every screen route through Airflow's own app (``create_app``), with its simple auth
manager: no token, no data; a viewer reads, only an editor changes."""

from __future__ import annotations

from erpmail.core.db import transaction
from tests.mailaccounts import add_account
from tests.outboxmail import enqueue_many

ROUTES = [
    "/erpmail/runs/dunning_run/manual__1/letters",
    "/erpmail/runs/dunning_run/manual__1/letters/1.pdf",
    "/erpmail/runs/dunning_run/manual__1/print-batch.pdf",
    "/erpmail/runs/dunning_run/manual__1/proposal",
    "/erpmail/outbox",
    "/erpmail/mail/unlinked",
    "/erpmail/mail/1",
]
CHANGES = [
    "/erpmail/runs/dunning_run/manual__1/letters/1/resend",
    "/erpmail/runs/dunning_run/manual__1/proposal",
    "/erpmail/outbox/1/retry",
    "/erpmail/mail/1/link",
]


def test_no_login_no_screen_a_viewer_reads_and_only_an_editor_changes(airflow_api, db):
    client, auth = airflow_api
    account = add_account(db)
    (outbox_id,) = enqueue_many(db, account, 1)
    with transaction(db) as cur:
        cur.execute(
            "UPDATE mail.outbox SET status = 'failed', last_error = '550 x' WHERE id = %s",
            (outbox_id,),
        )

    for route in ROUTES:
        assert client.get(route).status_code in (401, 403), route
    for route in CHANGES:
        assert client.post(route, data={"entity_type": "partner", "number": "1"}).status_code in (
            401,
            403,
        ), route
        assert (
            client.post(
                route, headers=auth["clerk"], data={"entity_type": "partner", "number": "1"}
            ).status_code
            == 403
        ), route

    outbox = client.get("/erpmail/outbox", params={"format": "json"}, headers=auth["clerk"])
    assert outbox.status_code == 200
    assert [f["id"] for f in outbox.json()["failed"]] == [outbox_id]
    assert client.get("/erpmail/mail/unlinked", headers=auth["clerk"]).status_code == 200
    assert client.get(ROUTES[0], headers=auth["clerk"]).status_code == 404  # no such run

    retried = client.post(
        f"/erpmail/outbox/{outbox_id}/retry", headers=auth["boss"], follow_redirects=False
    )
    assert retried.status_code == 303
    with transaction(db) as cur:
        cur.execute("SELECT status FROM mail.outbox WHERE id = %s", (outbox_id,))
        assert cur.fetchone() == ("queued",)
        cur.execute("SELECT actor FROM mail.audit_log WHERE action = 'retry_now'")
        assert cur.fetchall() == [("boss",)]
