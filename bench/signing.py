"""Signing benchmark: building a dunning-sized mail and signing it (S/MIME, detached PKCS#7)
against building the same mail unsigned, in the same run, taking turns round by round.

The mail is what routing queues for a letter: text and HTML bodies, a ~30 KB PDF. Both
ways start from ``mime.build_message``; the unsigned one ends in ``as_bytes()``, the signed
one in ``signing.sign`` with an identity loaded once (as a batch caches it). Certificates
come from a throwaway test CA: EC P-256 and RSA 2048. Prints ms per mail and the ratio.

    .venv/bin/python bench/signing.py [--mails 500] [--rounds 3]
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import scratch  # noqa: F401  (puts plugins/ and the repository root on sys.path)
from send import _pdf

SENDER = "buchhaltung@muster-handels.example.com"
TEXT = "Sehr geehrte Damen und Herren,\n\nbitte begleichen Sie die offenen Posten.\n" * 12
HTML = "<p>Sehr geehrte Damen und Herren,</p><p>bitte begleichen Sie ...</p>" * 40


def _build(i: int, pdf: bytes):
    from erpmail.documents import mime

    return mime.build_message(
        sender=("Muster Handels", SENDER),
        to=[f"kunde{i}@customer.example"],
        subject=f"Zahlungserinnerung 2026-{i:06d}",
        text=TEXT,
        html=HTML,
        attachments=[mime.Attachment(f"Zahlungserinnerung {i}.pdf", pdf)],
        message_id=mime.make_message_id(f"bench-sign-{i}", "muster-handels.example.com"),
    )


def _time(n: int, make) -> float:
    start = time.perf_counter()
    size = 0
    for i in range(n):
        size += len(make(i))
    assert size
    return (time.perf_counter() - start) / n * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mails", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from erpmail.documents import signing
    from tests.servers.tlsca import make_certs, signing_identity

    certs = make_certs(Path(tempfile.mkdtemp(prefix="erpmail-bench-signing-")))
    pdf = _pdf()
    identities = {}
    for name, bits in (("EC P-256", 0), ("RSA 2048", 2048)):
        made = signing_identity(certs, SENDER, rsa_bits=bits)
        conn = SimpleNamespace(
            password=made.password, extra_dejson={"pkcs12": base64.b64encode(made.pkcs12).decode()}
        )
        start = time.perf_counter()
        identities[name] = signing.load_identity("bench", "bench", connection=conn, revoked=[])
        loaded = (time.perf_counter() - start) * 1000
        print(f"{name}: PKCS#12 loaded and checked once in {loaded:.1f} ms")
    print(
        f"{args.mails} mails of {len(_build(0, pdf).as_bytes()) / 1024:.0f} KB, "
        f"{args.rounds} rounds, load average {os.getloadavg()[0]:.2f}"
    )

    times: dict[str, list[float]] = {"unsigned": [], **{name: [] for name in identities}}
    for _ in range(args.rounds):
        times["unsigned"].append(_time(args.mails, lambda i: _build(i, pdf).as_bytes()))
        for name, identity in identities.items():
            times[name].append(
                _time(args.mails, lambda i, id_=identity: signing.sign(_build(i, pdf), id_))
            )
    base = statistics.median(times["unsigned"])
    print(f"{'way':<20} {'ms per mail':>12} {'signing ms':>11} {'ratio':>7}")
    print(f"{'unsigned build':<20} {base:>12.3f} {'':>11} {1.0:>6.2f}x")
    for name in identities:
        median = statistics.median(times[name])
        print(
            f"{'signed, ' + name:<20} {median:>12.3f} {median - base:>11.3f} {median / base:>6.2f}x"
        )
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
