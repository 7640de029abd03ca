"""``erpmail campaign pause|resume|cancel|status ID``: a campaign's state from the command
line (the ``campaign_send`` DAG does the sending)."""

from __future__ import annotations

import argparse

STATES = {"pause": "paused", "resume": "sending", "cancel": "cancelled", "schedule": "scheduled"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``campaign`` sub-command."""
    cmd = sub.add_parser("campaign", help="marketing campaigns (mail.campaigns)")
    actions = cmd.add_subparsers(dest="campaign_command", required=True)
    for action, state in STATES.items():
        one = actions.add_parser(action, help=f"set the campaign {state}")
        one.add_argument("id", type=int)
        one.set_defaults(func=_set_state)
    status = actions.add_parser("status", help="the recipients per status and reason")
    status.add_argument("id", type=int)
    status.set_defaults(func=_status)


def _set_state(args: argparse.Namespace) -> int:
    from erpmail.campaigns import sending

    state = STATES[args.campaign_command]
    if not sending.set_status(args.id, state):
        raise ValueError(f"id: campaign {args.id} cannot be {state} now (or does not exist)")
    print(f"campaign {args.id} {state}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from erpmail.campaigns import sending
    from erpmail.core import db

    with db.transaction() as cur:
        for key, n in sending.summary(cur, args.id).items():
            print(f"{key}\t{n}")
    return 0
