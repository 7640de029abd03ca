"""The screens' pages themselves (the login is tested on the real API server, in the e2e
suite): mail HTML never runs, nothing comes from elsewhere."""

from __future__ import annotations

from fastapi.testclient import TestClient

from erpmail.core.db import transaction
from erpmail.ui import app as screens_app


def test_html_mail_is_shown_in_a_sandbox_with_nothing_from_elsewhere(db):
    with transaction(db) as cur:
        cur.execute(
            "INSERT INTO mail.import_locations (name, conn_id) VALUES ('in', 'imap_x') RETURNING id"
        )
        (location,) = cur.fetchone()
        cur.execute(
            "INSERT INTO mail.messages (direction, location_id, sha256, eml_path, size_bytes, subject,"
            " body_html) VALUES ('in', %s, repeat('a', 64), 'x.eml', 1, %s, %s) RETURNING id",
            (
                location,
                "<b>Rechnung</b>",
                '<p>Hallo</p><script>alert(1)</script><img src="https://tracker.example/p.gif">',
            ),
        )
        (mail_id,) = cur.fetchone()
    app = screens_app.build()
    for needed in (screens_app._read_mail, screens_app._link_mail):
        app.dependency_overrides[needed.dependency] = lambda: None  # the login: see the e2e test

    page = TestClient(app).get(f"/mail/{mail_id}")

    assert page.status_code == 200
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src" not in policy and "http" not in policy
    assert "<script>" not in page.text and "<b>Rechnung</b>" not in page.text
    assert '<iframe sandbox="" srcdoc="&lt;p&gt;Hallo&lt;/p&gt;&lt;script&gt;' in page.text
