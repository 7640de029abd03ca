"""Campaign benchmark: N recipients expanded, frozen and queued (recipients/s, target >=
5,000/s), then sent by the dispatcher (throttle off) against a bare smtplib loop sending the
same queued messages to the same local sink in the same run (ratio, target >= 0.8). Each
round is a new campaign to the same partners; the figures are the best of the rounds.

    .venv/bin/python bench/campaign.py [--recipients 20000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import time

from scratch import scratch_database
from send import _sink, bare_loop

PARTNERS = """
INSERT INTO erp.partners (company, number, name, email, language, customer_group)
SELECT 'DEMO', 'B' || lpad(n::text, 6, '0'), 'Kunde ' || n, 'b' || n || '@customer.example',
       (ARRAY['de', 'en', 'nl'])[n %% 3 + 1], 'BENCH'
  FROM generate_series(1, %s) n"""


def _campaign(url: str, name: str) -> int:
    """A scheduled campaign over the bench partners, its texts in three languages."""
    from erpmail.core import db

    with db.transaction(db.connect(url)) as cur:
        cur.execute(
            "INSERT INTO mail.campaigns (name, company, account, customer_groups, start_at,"
            " status) VALUES (%s, 'DEMO', 'bench', ARRAY['BENCH'], now(), 'scheduled')"
            " RETURNING id",
            (name,),
        )
        (campaign,) = cur.fetchone()
        for lang, greeting in (("de", "Hallo"), ("en", "Hello"), ("nl", "Hallo")):
            cur.execute(
                "INSERT INTO mail.campaign_texts VALUES (%s, %s, %s, %s, %s)",
                (campaign, lang, "News {{ partner.number }}",
                 f"<p>{greeting} {{{{ partner.name }}}}</p>", f"{greeting} {{{{ partner.name }}}}"),
            )  # fmt: skip
    return campaign


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=2, help="a campaign each; best of each")
    args = parser.parse_args()
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
    os.environ["ERPMAIL_UNSUBSCRIBE_SECRET"] = "bench-secret-0123456789"
    os.environ["ERPMAIL_PUBLIC_URL"] = "https://erp.example.com"
    with scratch_database() as url:
        os.environ["ERPMAIL_DB_URL"] = url
        from erpmail.campaigns import sending
        from erpmail.core import db
        from erpmail.outbound import dispatch
        from erpmail.outbound.accounts import create_account

        with db.transaction(db.connect(url)) as cur:
            create_account(cur, name="bench", conn_id="smtp_bench", from_address="news@demo.example",
                           send_interval_seconds=0, is_default=True)  # fmt: skip
            cur.execute("INSERT INTO erp.companies (code, name) VALUES ('DEMO', 'Demo GmbH')")
            cur.execute(PARTNERS, (args.recipients,))
        queue, bare, disp = [], [], []
        for r in range(args.rounds):
            campaign = _campaign(url, f"bench {r + 1}")
            start = time.perf_counter()
            summary = sending.send(campaign, batch=1000)
            queue.append(time.perf_counter() - start)
            assert summary.get("queued:queued") == args.recipients, summary
            conn = db.connect(url)
            with db.transaction(conn) as cur:
                cur.execute(
                    "SELECT key, recipients[1], mime FROM mail.outbox"
                    " WHERE source_type = 'campaign' AND status = 'queued' ORDER BY id"
                )
                messages = [(k, to, bytes(m)) for k, to, m in cur.fetchall()]
            # the queue's dead rows and statistics settled now, not by an autovacuum that
            # would start in one of the two timed phases and not the other
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("VACUUM (ANALYZE) mail.outbox, mail.outbox_recipients")
            conn.close()
            before, cpu = counter.value, time.process_time()
            bare.append(bare_loop(port, messages))
            bare_cpu = (time.process_time() - cpu) / args.recipients * 1000
            assert counter.value - before == args.recipients
            before, cpu = counter.value, time.process_time()
            start = time.perf_counter()
            sent = dispatch.dispatch(budget_seconds=1800, url=url, progress_every=30.0).sent
            disp.append(time.perf_counter() - start)
            disp_cpu = (time.process_time() - cpu) / args.recipients * 1000
            assert sent == args.recipients and counter.value - before == args.recipients
            print(
                f"round {r + 1}: queued {args.recipients / queue[-1]:6.0f} recipients/s; "
                f"bare smtplib {args.recipients / bare[-1]:7.1f} msg/s, dispatcher "
                f"{args.recipients / disp[-1]:7.1f} msg/s; client CPU per message: "
                f"bare {bare_cpu:.2f} ms, dispatcher {disp_cpu:.2f} ms"
            )
        size = sum(len(m) for _, _, m in messages) / len(messages)
    sink.terminate()
    n, best = args.recipients, f"(best of {args.rounds})"
    print(f"recipients: {n} in three languages, {size / 1024:.1f} KB per message")
    print(f"expand + freeze + queue: {n / min(queue):8.0f} recipients/s {best} (target >= 5000)")
    print(f"bare smtplib loop, one connection: {n / min(bare):7.1f} msg/s {best}")
    print(f"dispatcher, throttle off:          {n / min(disp):7.1f} msg/s {best}")
    print(f"ratio dispatcher / bare: {min(bare) / min(disp):.2f} (target >= 0.8)")
    print(
        "load average (1, 5, 15 min): "
        f"{' '.join(f'{x:.2f}' for x in load_before)} at the start, "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end"
    )


if __name__ == "__main__":
    main()
