"""Send benchmark: the dispatcher (throttle off) against a bare smtplib loop, same sink, same run.

N messages with a ~30 KB PDF each go to a local aiosmtpd sink running in its own process.
The baseline hands the same MIME bytes to ``smtplib.SMTP.sendmail`` over one connection;
the dispatcher claims, sends and records them through the outbox in a scratch database.
Prints both rates, the ratio (target >= 0.9), client CPU per message and the load average
at the start and the end (the sink and PostgreSQL share the machine's cores with the client).

    .venv/bin/python bench/send.py [--messages 2000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import os
import smtplib
import time

from scratch import scratch_database


def _sink(port, counter, ready) -> None:
    """An aiosmtpd server that accepts and counts everything (runs in a child process)."""
    from aiosmtpd.controller import Controller

    class Count:
        async def handle_DATA(self, server, session, envelope):
            with counter.get_lock():
                counter.value += 1
            return "250 2.0.0 Ok: queued"

    controller = Controller(
        Count(), hostname="127.0.0.1", port=port, server_hostname="localhost", decode_data=False
    )
    controller.start()
    ready.set()
    while True:
        time.sleep(3600)


def _pdf(size: int = 30_000) -> bytes:
    from pypdf import PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(595, 842)
    writer.add_attachment("data.bin", os.urandom(size))  # incompressible: keeps the size
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def _messages(n: int, prefix: str, pdf: bytes) -> list[tuple[str, str, bytes]]:
    from erpmail.documents.mime import Attachment, build_message, make_message_id

    out = []
    for i in range(n):
        key = f"{prefix}-{i}"
        to = f"kunde{i}@customer.example"
        msg = build_message(
            sender=("Buchhaltung", "ar@demo.example"),
            to=[to],
            subject=f"Zahlungserinnerung {i}",
            text="Sehr geehrte Damen und Herren,\n\nanbei unsere Zahlungserinnerung.\n",
            attachments=[Attachment(f"mahnung-{i}.pdf", pdf)],
            message_id=make_message_id(key, "demo.example"),
        )
        out.append((key, to, msg.as_bytes()))
    return out


def bare_loop(port: int, messages) -> float:
    """Seconds for sendmail() over one connection."""
    start = time.perf_counter()
    client = smtplib.SMTP("127.0.0.1", port, timeout=30)
    for _key, to, mime in messages:
        client.sendmail("ar@demo.example", [to], mime)
    client.quit()
    return time.perf_counter() - start


def dispatcher_run(url: str, account, messages) -> tuple[float, int, float]:
    """Seconds for the dispatcher to send the queued messages, how many it sent, CPU seconds."""
    from erpmail.core import db
    from erpmail.outbound import dispatch, outbox

    conn = db.connect(url)
    with db.transaction(conn) as cur:
        for key, to, mime in messages:
            outbox.enqueue(
                cur,
                key=key,
                account_id=account.id,
                recipients=[to],
                mime=mime,
                source_type="manual",
            )
    conn.close()
    start, cpu = time.perf_counter(), time.process_time()
    summary = dispatch.dispatch(budget_seconds=900, url=url, progress_every=10.0)
    return time.perf_counter() - start, summary.sent, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; best of each")
    args = parser.parse_args()

    import json
    import logging

    from tests.servers.dovecot import free_port

    logging.basicConfig(level=logging.WARNING)
    load_before = os.getloadavg()
    ctx = mp.get_context("spawn")
    counter, ready = ctx.Value("l", 0), ctx.Event()
    port = free_port()
    sink = ctx.Process(target=_sink, args=(port, counter, ready), daemon=True)
    sink.start()
    ready.wait(30)
    os.environ["AIRFLOW_CONN_SMTP_BENCH"] = json.dumps(
        {"conn_type": "smtp", "host": "127.0.0.1", "port": port, "extra": {"security": "none"}}
    )
    pdf = _pdf()
    with scratch_database() as url:
        from erpmail.core import db
        from erpmail.outbound.accounts import create_account

        with db.transaction(db.connect(url)) as cur:
            account = create_account(
                cur,
                name="bench",
                conn_id="smtp_bench",
                from_address="ar@demo.example",
                send_interval_seconds=0,
            )
        bare, disp = [], []
        for r in range(args.rounds):
            msgs = _messages(args.messages, f"r{r}", pdf)
            size = sum(len(m) for _, _, m in msgs) / len(msgs)
            before, cpu = counter.value, time.process_time()
            bare.append(bare_loop(port, msgs))
            bare_cpu = (time.process_time() - cpu) / args.messages * 1000
            assert counter.value - before == args.messages, "sink missed messages (bare)"
            before = counter.value
            seconds, sent, disp_cpu = dispatcher_run(url, account, msgs)
            assert sent == args.messages and counter.value - before == args.messages
            disp.append(seconds)
            print(
                f"round {r + 1}: bare smtplib {args.messages / bare[-1]:7.1f} msg/s, "
                f"dispatcher {args.messages / disp[-1]:7.1f} msg/s; client CPU per message: "
                f"bare {bare_cpu:.2f} ms, dispatcher {disp_cpu / args.messages * 1000:.2f} ms"
            )
        bare_rate, disp_rate = args.messages / min(bare), args.messages / min(disp)
        print(
            f"messages: {args.messages} x {size / 1024:.1f} KB (PDF attachment {len(pdf) / 1024:.1f} KB)"
        )
        print(f"bare smtplib loop, one connection: {bare_rate:7.1f} msg/s (best of {args.rounds})")
        print(f"dispatcher, throttle off:          {disp_rate:7.1f} msg/s (best of {args.rounds})")
        print(f"ratio dispatcher / bare: {disp_rate / bare_rate:.2f} (target >= 0.9)")
        print(
            "load average (1, 5, 15 min): "
            f"{' '.join(f'{x:.2f}' for x in load_before)} at the start, "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end"
        )
    sink.terminate()


if __name__ == "__main__":
    main()
