"""envelope_address gives smtplib.quoteaddr's result for every kind of address."""

from __future__ import annotations

import smtplib

import pytest

from erpmail.outbound.envelope import envelope_address


@pytest.mark.parametrize(
    "address",
    [
        "ar@demo.example",
        "kunde.7+x_y-z@sub.customer-1.example",
        "o'brien!#$%&*/=?^`{|}~@x.example",
        "a..b@x.example",  # not a dot-atom: smtplib's parser decides
        ".a@x.example",
        "a@x..example",
        "a@[192.0.2.1]",
        '"quoted local"@x.example',
        "a(comment)@x.example",
        "a@x.example.",
        "müller@x.example",
        "Name <a@x.example>",
        "",
    ],
)
def test_envelope_address_matches_smtplib(address):
    assert envelope_address(address) == smtplib.quoteaddr(address)
