"""Event mail: what happens in the ERP or in erpmail (``erp.events``), turned into mail by
rules (``mail.event_rules``: clerk notifications, digests, support requests) or by a customer
group's portal settings. Imports ``core``, ``documents`` (templates, MIME) and ``outbound``
(accounts, the outbox).
"""
