"""Operators for the steps of a document run (dunning, balance confirmations, payment advice,
and any kind added to ``erpmail.documents.runs.KINDS``), and ``document_tasks``, which wires
them into a DAG:

``start`` -> ``generate`` -> ``plan`` -> ``batch`` (a task group mapped per batch: ``render``
then ``route``) -> ``print_batch`` -> ``summary``; with approval, ``approve`` (after every
render, before every route) waits for a clerk unless ``approval_gate`` skips it.

Each batch routes (and the dispatcher can send its mail) as soon as it is rendered, without
waiting for the other batches. The kind is a name, looked up inside ``execute``, so parsing a
DAG file stays cheap. Steps pass run and batch ids only, and the mapped tasks grow with the
number of batches, never with the letters. The form fields every document run reads the same
way (company, partner range, dry run, note) are defined here too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from airflow.providers.standard.operators.branch import BaseBranchOperator
from airflow.providers.standard.operators.hitl import ApprovalOperator, HITLOperator
from airflow.sdk import BaseOperator, Param, task_group

PARTNER_NUMBER = "^[0-9A-Za-z_-]{0,20}$"
# Libraries that log every rendering step at INFO (WeasyPrint: ~6 lines per letter); in a
# task log they bury erpmail's progress. Their warnings and errors still show.
CHATTY_LIBRARIES = ("weasyprint", "fontTools", "PIL", "pydyf", "pypdf")
UI_COLOR = "#e8f0fb"


@contextmanager
def library_chatter_silenced(names: tuple[str, ...] = CHATTY_LIBRARIES) -> Iterator[None]:
    """Raise the named libraries' loggers to WARNING while the block runs, then restore them."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.level, logging.WARNING))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def company_param(description: str) -> Param:
    """The ``company`` field (erp.companies.code), default the demo company."""
    return Param(
        "DEMO", type="string", pattern="^[A-Z0-9_]{1,20}$", title="Company", description=description
    )


def partner_range_params() -> dict[str, Param]:
    """``partner_from`` and ``partner_to``; from after to is refused by ``start``."""
    return {
        "partner_from": Param(
            None,
            type=["null", "string"],
            pattern=PARTNER_NUMBER,
            title="Partner number from",
            description="First partner number (inclusive, compared as text); empty: from the first.",
        ),
        "partner_to": Param(
            None,
            type=["null", "string"],
            pattern=PARTNER_NUMBER,
            title="Partner number to",
            description="Last partner number (inclusive); empty: to the last. Must not be before "
            "'from' (checked by the first task).",
        ),
    }


def approval_param() -> dict[str, Param]:
    """``approval``: whether the rendered run waits for a clerk before anything is routed."""
    return {
        "approval": Param(
            True,
            type="boolean",
            title="Approval",
            description="Wait after rendering until a clerk approves the proposal (Letters "
            "screen, or the run's Required Actions); off: route as soon as rendered.",
        )
    }


def run_option_params() -> dict[str, Param]:
    """``dry_run`` and ``note``, the last fields of every document run's form."""
    return {
        "dry_run": Param(
            False,
            type="boolean",
            title="Dry run",
            description="Generate and render for review only: nothing archived, nothing queued.",
        ),
        "note": Param(
            None,
            type=["null", "string"],
            maxLength=500,
            title="Note",
            description="Free text kept on the run and in its summary.",
        ),
    }


class StartDocumentRunOperator(BaseOperator):
    """Check the run's form and create the document run (an ``erp.runs`` row, one per Airflow
    run; a rerun or a cleared task finds the same one). Returns the run's id, which the other
    steps take as ``erp_run``.

    The form is the DAG run's params: ``company``, ``dry_run`` and ``note`` as every form has
    them, the rest read by the kind. A form that does not fit (e.g. partner from after to)
    fails the task without a retry and writes nothing.

    :param kind: the document kind, a name in ``erpmail.documents.runs.KINDS``, e.g.
        ``"dunning"`` (templated)
    """

    template_fields: Sequence[str] = ("kind",)
    ui_color = UI_COLOR

    def __init__(self, *, kind: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kind = kind

    def execute(self, context: Any) -> int:
        from airflow.sdk.exceptions import AirflowFailException

        from erpmail.documents import runs

        try:
            dag_run = context["dag_run"]
            return runs.start_run(
                runs.kind_named(self.kind), dag_run.run_id, context["params"],
                user=getattr(dag_run, "triggering_user_name", None),
            )  # fmt: skip
        except ValueError as exc:  # a form that does not fit: retrying will not help
            raise AirflowFailException(str(exc)) from exc


class GenerateLettersOperator(BaseOperator):
    """Write the run's letters and their items (status ``generated``), once: a rerun writes
    nothing. Returns how many letters the run has.

    :param kind: the document kind, as given to ``StartDocumentRunOperator`` (templated)
    :param erp_run: the run's id, e.g. ``start.output`` (templated)
    """

    template_fields: Sequence[str] = ("kind", "erp_run")
    ui_color = UI_COLOR

    def __init__(self, *, kind: str, erp_run: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kind, self.erp_run = kind, erp_run

    def execute(self, context: Any) -> int:
        from erpmail.documents import runs

        return runs.generate(int(self.erp_run), runs.kind_named(self.kind))


class PlanBatchesOperator(BaseOperator):
    """Split the run's letters into batches, once (contiguous by partner number, at most
    ``erpmail.documents.runs.MAX_BATCHES``). Returns the batch numbers: what the per-batch
    steps are mapped over.

    :param erp_run: the run's id (templated)
    :param letters: how many letters the run has, e.g. ``generate.output``; None: counted
        (templated)
    """

    template_fields: Sequence[str] = ("erp_run", "letters")
    ui_color = UI_COLOR

    def __init__(self, *, erp_run: Any, letters: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.erp_run, self.letters = erp_run, letters

    def execute(self, context: Any) -> list[int]:
        from erpmail.documents import runs

        letters = None if self.letters is None else int(self.letters)
        return runs.plan_batches(int(self.erp_run), letters)


class _BatchStepOperator(BaseOperator):
    """A step of one batch of a run: the kind, the run's id and the batch number."""

    template_fields: Sequence[str] = ("kind", "erp_run", "batch")
    ui_color = UI_COLOR

    def __init__(self, *, kind: str, erp_run: Any, batch: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kind, self.erp_run, self.batch = kind, erp_run, batch


class RenderBatchOperator(_BatchStepOperator):
    """Render one batch: each ``generated`` letter as a PDF, archived (``archived``; a dry
    run's under ``review/``, ``rendered``), or ``failed`` alone with its reason. Returns the
    counts by status.

    :param kind: the document kind (templated)
    :param erp_run: the run's id (templated)
    :param batch: the batch number, one of ``plan.output`` (templated)
    """

    def execute(self, context: Any) -> dict[str, int]:
        from erpmail.documents import rendering, runs

        with library_chatter_silenced():
            return rendering.render_batch(
                int(self.erp_run), int(self.batch), runs.kind_named(self.kind)
            )


class RouteBatchOperator(_BatchStepOperator):
    """Route one rendered batch: each ``archived`` letter to the outbox with its PDF
    (``released``, queued in the same transaction; the outbox key is derived from run and
    letter, so a rerun queues nothing twice), or to ``paper`` with the reason. A dry run
    routes nothing. Returns the counts by route.

    :param kind: the document kind (templated)
    :param erp_run: the run's id (templated)
    :param batch: the batch number (templated)
    """

    def execute(self, context: Any) -> dict[str, int]:
        from erpmail.documents import routing, runs

        return routing.route_batch(int(self.erp_run), int(self.batch), runs.kind_named(self.kind))


class ApprovalGateOperator(BaseBranchOperator):
    """Ask for approval (run ``approve``) when the form asks for it and the run is not a dry
    run; else skip ``approve`` at once, so each batch routes as soon as it is rendered."""

    ui_color = UI_COLOR

    def choose_branch(self, context: Any) -> str | None:
        params = context["params"]
        return "approve" if params.get("approval") and not params.get("dry_run") else None


class ApproveProposalOperator(ApprovalOperator):
    """Wait for a clerk's decision on the rendered run's proposal (Airflow's human-in-the-loop
    request: Approve or Reject, with the partners to leave out), then write it on the run
    (``erpmail.documents.approval.decide``): who, when, what is withheld.

    A reject withholds every letter and skips nothing: the routes find nothing to queue, and
    the print batch and summary still close the run. A run decided before (a cleared task)
    is not asked again.

    :param kind: the document kind (templated)
    :param erp_run: the run's id (templated)
    """

    template_fields: Sequence[str] = ("subject", "body", "kind", "erp_run")
    ui_color = UI_COLOR

    def __init__(self, *, kind: str, erp_run: Any, params: Any = None, **kwargs: Any) -> None:
        # the form of the request is its own: the DAG's params (passed in here) are the run's
        super().__init__(
            subject="Approve the dunning proposal",
            params={
                "exclude": Param(
                    [],
                    type="array",
                    items={"type": "string", "pattern": PARTNER_NUMBER},
                    title="Partners to leave out",
                    description="Partner numbers whose letters are withheld on approval.",
                )
            },
            **kwargs,
        )
        self.kind, self.erp_run = kind, erp_run

    def execute(self, context: Any) -> Any:
        from erpmail.documents import approval, runs

        run_id = int(self.erp_run)
        if (done := approval.decided(run_id)) is not None:
            self.log.info("run %s was %s by %s", run_id, _verdict(done), done.user)
            return None
        proposal = approval.propose(run_id, runs.kind_named(self.kind))
        dag_run = context["dag_run"]
        link = f"/erpmail/runs/{dag_run.dag_id}/{dag_run.run_id}/proposal"
        self.body = approval.proposal_text(proposal, link)
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        from airflow.sdk.exceptions import AirflowFailException

        from erpmail.documents import approval

        # the human-in-the-loop checks only: ApprovalOperator's own reject would skip the rest
        result = HITLOperator.execute_complete(self, context, event)
        who = result["responded_by_user"] or {}
        decision = approval.Decision(
            approved=result["chosen_options"] == [self.APPROVE],
            user=str(who.get("name") or who.get("id") or "unknown"),
            at=result["responded_at"],
            excluded=approval.excluded_numbers(result["params_input"].get("exclude")),
        )
        try:
            outcome = approval.decide(int(self.erp_run), decision)
        except approval.DecisionRefused as exc:  # clear this task to ask again
            raise AirflowFailException(str(exc)) from exc
        self.log.info("%s by %s: %s", _verdict(decision), decision.user, outcome)
        return {"approval": _verdict(decision), "by": decision.user, **outcome}


def _verdict(decision: Any) -> str:
    return "approved" if decision.approved else "rejected"


class PrintBatchOperator(BaseOperator):
    """Merge the run's paper letters (a dry run: every rendered letter, for review) into one
    archived PDF by partner number, then drop the PDFs a level keeps no copy of. Returns the
    batch's archive key, None when there are none.

    :param kind: the document kind (templated)
    :param erp_run: the run's id (templated)
    """

    template_fields: Sequence[str] = ("kind", "erp_run")
    ui_color = UI_COLOR

    def __init__(self, *, kind: str, erp_run: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kind, self.erp_run = kind, erp_run

    def execute(self, context: Any) -> str | None:
        from erpmail.documents import runs, summary

        with library_chatter_silenced():
            key = summary.print_batch(int(self.erp_run), runs.kind_named(self.kind).document)
        summary.drop_unkept_pdfs(int(self.erp_run))
        return key


class SummarizeRunOperator(BaseOperator):
    """Close the run with its summary (letters per status and level, totals, paper reasons,
    failures, the print batch): stored on ``erp.runs.summary``, logged as a text a clerk reads
    in the company's language, and returned.

    :param erp_run: the run's id (templated)
    """

    template_fields: Sequence[str] = ("erp_run",)
    ui_color = UI_COLOR

    def __init__(self, *, erp_run: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.erp_run = erp_run

    def execute(self, context: Any) -> dict[str, Any]:
        from erpmail.documents import summary

        return summary.summarize(int(self.erp_run))


def document_tasks(
    kind: str, *, approval: bool = False, render: type[RenderBatchOperator] = RenderBatchOperator
) -> tuple[BaseOperator, BaseOperator]:
    """Add a whole document run of ``kind`` to the DAG being defined: ``start``, ``generate``,
    ``plan``, the task group ``batch`` mapped per batch (``batch.render`` then
    ``batch.route``), ``print_batch`` after every batch, ``summary`` last. The DAG's params
    are the form. Returns the first and the last task, to wire more around them.

    ``render``: the operator rendering one batch, for a kind whose letters are not one
    template each (documents on demand).

    ``approval``: the form has the ``approval`` field; when it is on, ``approve`` waits for
    every batch's render and every route waits for ``approve`` (``approval_gate`` skips it
    otherwise, and the routes run on: trigger rule ``none_failed``)."""
    start = StartDocumentRunOperator(task_id="start", kind=kind, retries=0)
    generate = GenerateLettersOperator(task_id="generate", kind=kind, erp_run=start.output)
    plan = PlanBatchesOperator(task_id="plan", erp_run=start.output, letters=generate.output)
    approve = None
    if approval:
        approve = ApproveProposalOperator(task_id="approve", kind=kind, erp_run=start.output)
        start >> ApprovalGateOperator(task_id="approval_gate") >> approve

    @task_group(group_id="batch")
    def batch(erp_run: Any, batch: Any) -> None:
        """One batch: rendered, then routed, without waiting for the other batches."""
        rendered = render(task_id="render", kind=kind, erp_run=erp_run, batch=batch)
        route = RouteBatchOperator(
            task_id="route", kind=kind, erp_run=erp_run, batch=batch, trigger_rule="none_failed"
        )
        rendered >> route
        if approve is not None:
            rendered >> approve >> route

    batches = batch.partial(erp_run=start.output).expand(batch=plan.output)
    summary = SummarizeRunOperator(task_id="summary", erp_run=start.output)
    batches >> PrintBatchOperator(task_id="print_batch", kind=kind, erp_run=start.output) >> summary
    return start, summary
