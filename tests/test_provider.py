"""Airflow finds erpmail as a provider: its connection types, their form fields, the hooks."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

from erpmail.provider import get_provider_info


def test_the_entry_point_is_installed():
    (found,) = [
        e for e in entry_points(group="apache_airflow_provider") if e.dist.name == "erpmail"
    ]
    assert found.load() is get_provider_info


def test_providers_manager_knows_the_hooks_and_their_forms():
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    assert manager.providers["erpmail"].data["package-name"] == "erpmail"
    hooks = manager.hooks
    for conn_type, hook, attr in [
        ("erpmail_smtp", "erpmail.outbound.smtp.SmtpHook", "smtp_conn_id"),
        ("erpmail_imap", "erpmail.inbound.imap.ImapHook", "imap_conn_id"),
    ]:
        info = hooks[conn_type]
        assert (info.hook_class_name, info.connection_id_attribute_name) == (hook, attr)
        assert info.connection_testable
        fields = {
            name.rpartition("__")[2]: widget.field
            for name, widget in manager.connection_form_widgets.items()
            if name.startswith(f"extra__{conn_type}__")
        }
        assert set(fields) == {"security", "ca_file", "timeout"}
        assert manager.field_behaviours[conn_type]["hidden_fields"] == ["schema"]
    assert (
        "none"
        in manager.connection_form_widgets["extra__erpmail_smtp__security"].field["schema"]["enum"]
    )
    assert (
        "none"
        not in manager.connection_form_widgets["extra__erpmail_imap__security"].field["schema"][
            "enum"
        ]
    )
    # the plain types stay with their own providers: erpmail's hooks still read them
    assert hooks["smtp"].package_name == "apache-airflow-providers-smtp"


def test_reading_the_provider_info_imports_no_airflow_and_no_hook():
    # Airflow loads it while reading its configuration: an import of Airflow there would
    # be circular, and a hook's libraries would slow every Airflow process's start
    probe = (
        "import sys, erpmail.provider as p; p.get_provider_info(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('airflow', 'imapclient')"
        " or m.startswith(('erpmail.outbound', 'erpmail.inbound', 'erpmail.operators'))))"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"
