"""Operators for the archive's retention: refuse a purge request that cannot run, and purge
(or, dry, report) archived mail past its policy (``erpmail.retention.purge``).

Their options are template fields: a DAG that fills them from its params
(``"{{ params.dry_run }}"``) sets ``render_template_as_native_obj=True``, so a flag stays a
flag; the text ``"True"``/``"False"`` is understood as well, anything else is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

UI_COLOR = "#f3ece0"


def _flag(name: str, value: Any) -> bool:
    """A flag given as a bool or as the text a non-native template renders."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "false"):
        return text == "true"
    raise ValueError(f"{name}: {value!r} is not true or false")


def _text(value: Any) -> str | None:
    """A text option: None and "" mean not given."""
    return None if value is None or value == "" else str(value)


class CheckPurgeRequestOperator(BaseOperator):
    """Fail, without a retry and before anything is touched, a purge request that cannot run:
    ``force`` without a reason. Returns the request as it will be recorded.

    :param force: let the legal minimums give way (never a legal hold) (templated)
    :param force_reason: why; required with ``force``, recorded in the audit log (templated)
    """

    template_fields: Sequence[str] = ("force", "force_reason")
    ui_color = UI_COLOR

    def __init__(self, *, force: Any = False, force_reason: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.force, self.force_reason = force, force_reason

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException

        from erpmail.retention import purge

        try:
            force = _flag("force", self.force)
            reason = purge.check_request(force=force, force_reason=_text(self.force_reason))
        except ValueError as exc:
            raise AirflowFailException(str(exc)) from exc
        return {"force": force, "force_reason": reason}


class PurgeArchiveOperator(BaseOperator):
    """Delete archived mail past its retention policy, files and rows together in batches,
    never below the legal minimums unless forced, never under legal hold; first it removes
    files a crashed run left recorded. Writes one audit row per policy (the DAG run's id as
    the run id). Returns the run's summary: per policy its cut-offs and counts, and for a
    dry run the months that would go.

    A bad request (an unknown location, force without a reason) fails without a retry.

    :param dry_run: only report what would go. A *scheduled* DAG run always purges for real
        (the scheduler passes no form); any other run honours it (templated)
    :param location: an import location's name, or ``"sent"`` for the sent-mail policy;
        None: every policy (templated)
    :param force: let the legal minimums give way (templated)
    :param force_reason: why; required with ``force`` (templated)
    :param batch_size: mails deleted per transaction; a mailbox import running meanwhile
        waits at most one batch (templated)
    :param actor: who is recorded as running it; None: the user who triggered the DAG run,
        else "<run type> run" (templated)
    """

    template_fields: Sequence[str] = (
        "dry_run",
        "location",
        "force",
        "force_reason",
        "batch_size",
        "actor",
    )
    ui_color = UI_COLOR

    def __init__(
        self,
        *,
        dry_run: Any = True,
        location: Any = None,
        force: Any = False,
        force_reason: Any = None,
        batch_size: Any = 1000,
        actor: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.dry_run, self.location = dry_run, location
        self.force, self.force_reason = force, force_reason
        self.batch_size, self.actor = batch_size, actor

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException

        from erpmail.retention import purge

        dag_run = context["dag_run"]
        run_type = str(getattr(dag_run.run_type, "value", dag_run.run_type))
        try:
            return purge.run(
                dry_run=purge.dry_run_for(run_type, _flag("dry_run", self.dry_run)),
                location=_text(self.location),
                force=_flag("force", self.force),
                force_reason=_text(self.force_reason),
                actor=_text(self.actor) or dag_run.triggering_user_name or f"{run_type} run",
                run_id=dag_run.run_id,
                batch_size=int(self.batch_size),
            )
        except ValueError as exc:  # a bad request (unknown location): a retry cannot help
            raise AirflowFailException(str(exc)) from exc
