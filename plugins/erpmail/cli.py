"""The ``erpmail`` command: ``erpmail db migrate``, ``erpmail seed``."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from datetime import date

from erpmail import db, seed


def _migrate(args: argparse.Namespace) -> int:
    applied = db.migrate()
    print("\n".join(f"applied {name}" for name in applied) or "nothing to apply")
    return 0


def _seed(args: argparse.Namespace) -> int:
    db.migrate()
    started = time.monotonic()
    conn = db.connect()
    try:
        counts = seed.seed(conn, partners=args.partners, seed=args.seed, as_of=args.as_of)
    finally:
        conn.close()
    took = time.monotonic() - started
    print(", ".join(f"{n} {table}" for table, n in counts.items()) + f" in {took:.1f} s")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from erpmail import demo  # imports Airflow and aiosmtpd: only for this command

    return demo.main(["--partners", str(args.partners)])


def build_parser() -> argparse.ArgumentParser:
    """The command line, one sub-command per job."""
    parser = argparse.ArgumentParser(prog="erpmail", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    db_cmd = sub.add_parser("db", help="database schema")
    db_sub = db_cmd.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("migrate", help="apply the migrations in sql/ not yet applied").set_defaults(
        func=_migrate
    )
    seed_cmd = sub.add_parser("seed", help="insert deterministic demo data")
    seed_cmd.add_argument("--partners", type=int, default=200)
    seed_cmd.add_argument("--seed", type=int, default=1)
    seed_cmd.add_argument(
        "--as-of",
        type=date.fromisoformat,
        default=None,
        help="date the open items are spread back from (default today)",
    )
    seed_cmd.set_defaults(func=_seed)
    demo_cmd = sub.add_parser(
        "demo", help="a dunning run from seed data to .eml files, via Airflow"
    )
    demo_cmd.add_argument("--partners", type=int, default=200)
    demo_cmd.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
