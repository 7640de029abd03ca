"""erpmail as an Airflow provider: its connection types (with their form fields) and its
notifier, found by Airflow through the ``apache_airflow_provider`` entry point in
pyproject.toml. Every Airflow process loads it while reading its configuration, so it
names the hooks as strings and imports only ``core.transport`` (no Airflow, no hook)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from erpmail.core.transport import IMAP, SMTP, Protocol, conn_fields, ui_field_behaviour


def _connection_type(kind: str, hook: str, name: str, protocol: Protocol) -> dict:
    return {
        "connection-type": kind,
        "hook-class-name": hook,
        "hook-name": name,
        "conn-fields": conn_fields(protocol),
        "ui-field-behaviour": ui_field_behaviour(protocol),
    }


def get_provider_info() -> dict:
    """The provider info Airflow's ProvidersManager reads (provider_info.schema.json)."""
    try:
        versions = [version("erpmail")]
    except PackageNotFoundError:  # run from a checkout that was never installed
        versions = []
    return {
        "package-name": "erpmail",
        "name": "erpmail",
        "description": "An ERP's business e-mail: SMTP and IMAP hooks with verified TLS, "
        "outbox and mailbox operators, a notifier that queues its mail in the outbox.",
        "versions": versions,
        "connection-types": [
            _connection_type(
                "erpmail_smtp", "erpmail.outbound.smtp.SmtpHook", "erpmail SMTP", SMTP
            ),
            _connection_type("erpmail_imap", "erpmail.inbound.imap.ImapHook", "erpmail IMAP", IMAP),
        ],
        "notifications": ["erpmail.operators.notifier.OutboxNotifier"],
    }
