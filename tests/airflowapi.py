"""Airflow's own API app (``create_app``, with the plugins of plugins/) and its simple auth
manager, for tests that call the screens or answer a run's approval request."""

from __future__ import annotations

import pytest

SIMPLE = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"


@pytest.fixture
def airflow_api(airflow_db, monkeypatch):
    """The app's test client, and headers with a token for a viewer (``clerk``) and an admin
    (``boss``)."""
    monkeypatch.setenv("AIRFLOW__CORE__AUTH_MANAGER", SIMPLE)
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "clerk:viewer,boss:admin")
    from airflow.api_fastapi.app import create_app, get_auth_manager, purge_cached_app
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from fastapi.testclient import TestClient

    purge_cached_app()
    client = TestClient(create_app("core"))
    tokens = {
        name: get_auth_manager().generate_jwt(SimpleAuthManagerUser(username=name, role=role))
        for name, role in (("clerk", "viewer"), ("boss", "admin"))
    }
    yield client, {n: {"Authorization": f"Bearer {t}"} for n, t in tokens.items()}
    purge_cached_app()
