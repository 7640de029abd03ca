"""erpmail's screens in the Airflow UI: an Airflow plugin.

A FastAPI app on the API server under ``/erpmail`` (``erpmail.ui.app``), a "Letters" tab on
every DAG run page and a "Mail" entry in the navigation. The app is built on its first
request, so that loading plugins (in the scheduler, the DAG processor, every worker) imports
nothing of erpmail.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin


class _ScreensOnFirstRequest:
    """An ASGI app that builds ``erpmail.ui.app.build()`` when the first request comes."""

    def __init__(self) -> None:
        self._app = None

    async def __call__(self, scope, receive, send):
        if self._app is None:
            from erpmail.ui.app import build

            self._app = build()
        await self._app(scope, receive, send)


class ErpmailScreens(AirflowPlugin):
    """The clerk's screens: letters of a document run, the outbox, unlinked mail."""

    name = "erpmail_screens"
    fastapi_apps = [
        {"app": _ScreensOnFirstRequest(), "url_prefix": "/erpmail", "name": "erpmail screens"}
    ]
    external_views = [
        {
            "name": "Letters",
            "href": "/erpmail/runs/{DAG_ID}/{RUN_ID}/letters",
            "destination": "dag_run",
            "url_route": "erpmail-letters",
        },
        {
            "name": "Mail",
            "href": "/erpmail/mail/unlinked",
            "destination": "nav",
            "url_route": "erpmail-mail",
        },
        {
            "name": "Outbox",
            "href": "/erpmail/outbox",
            "destination": "nav",
            "url_route": "erpmail-outbox",
        },
    ]
