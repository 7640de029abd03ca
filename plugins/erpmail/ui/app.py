"""The screens' FastAPI app, mounted by Airflow's API server under ``/erpmail``.

Every route needs Airflow's own login (the UI's session cookie or a bearer token) and the
auth manager's leave to read the DAG the screen belongs to: runs of the document DAGs, the
``outbox_dispatch`` DAG for the outbox, ``link_mail`` for mail. Pages are rendered on the server with autoescaping and a
Content-Security-Policy that allows nothing from elsewhere and no scripts at all; each page
has its JSON beside it (``?format=json``).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlencode

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
from fastapi import Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from erpmail.core import archive
from erpmail.documents import approval, corrections
from erpmail.inbound import linking
from erpmail.ui import screens

CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "frame-ancestors 'self'; form-action 'self'; base-uri 'none'"
)
LETTER_STATUSES = (
    "generated", "rendered", "archived", "released", "paper", "sent", "failed", "withheld"
)  # fmt: skip
APPROVAL_TASK = "approve"  # the dunning run's human-in-the-loop task

NO_PARTNERS = Form(default=[])

_pages = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(default=True),
)
_read_run = Depends(requires_access_dag("GET", DagAccessEntity.RUN))
_change_run = Depends(requires_access_dag("PUT", DagAccessEntity.RUN))
_decide_run = Depends(requires_access_dag("PUT", DagAccessEntity.HITL_DETAIL))
_read_outbox = Depends(requires_access_dag("GET", DagAccessEntity.RUN, "outbox_dispatch"))
_send_outbox = Depends(requires_access_dag("PUT", DagAccessEntity.RUN, "outbox_dispatch"))
_read_mail = Depends(requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id="link_mail"))
_link_mail = Depends(requires_access_dag("POST", DagAccessEntity.RUN, param_dag_id="link_mail"))


def build() -> FastAPI:
    """The app with its routes and headers."""
    app = FastAPI(title="erpmail screens", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def headers(request: Request, call_next):
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        return response

    @app.get("/runs/{dag_id}/{run_id}/letters", dependencies=[_read_run])
    def letters(
        dag_id: str,
        run_id: str,
        # the filter form sends empty values for "all"
        status: str = Query("", pattern=f"^({'|'.join(LETTER_STATUSES)})?$"),
        level: str = Query("", pattern="^[1-9]?$"),
        format: str = Query("html", pattern="^(html|json)$"),
        answered: str = Query("", pattern="^(approved|rejected)?$"),
    ):
        level_no = int(level) if level else None
        found = screens.run_letters(dag_id, run_id, status=status or None, level=level_no)
        if format == "json":
            if found is None:
                raise HTTPException(404, f"no letters for {dag_id} run {run_id!r}")
            return JSONResponse(_as_json(found))
        page = _pages.get_template("letters.html").render(
            dag_id=dag_id,
            run_key=run_id,
            run=found,
            status=status,
            level=level_no,
            answered=answered,
        )
        return HTMLResponse(page, status_code=200 if found is not None else 404)

    @app.get("/runs/{dag_id}/{run_id}/letters/{letter_id}.{kind}", dependencies=[_read_run])
    def letter_file(dag_id: str, run_id: str, letter_id: int, kind: str):
        run = screens.run_of(dag_id, run_id)
        files = screens.letter_files(run[0], letter_id) if run is not None else None
        key = None if files is None else {"pdf": files[0], "eml": files[1]}.get(kind)
        if key is None:
            raise HTTPException(404, f"letter {letter_id} has no {kind} in this run")
        return _download(key, f"letter-{letter_id}.{kind}")

    @app.post("/runs/{dag_id}/{run_id}/letters/{letter_id}/{action}", dependencies=[_change_run])
    def correct(
        request: Request, dag_id: str, run_id: str, letter_id: int, action: str, user: GetUserDep
    ):
        _same_origin(request)
        run = screens.run_of(dag_id, run_id)
        fix = {"resend": corrections.resend, "to-paper": corrections.to_paper}.get(action)
        if run is None or fix is None:
            raise HTTPException(404, f"no {action!r} for a letter of {dag_id} run {run_id!r}")
        try:
            fix(run[0], letter_id, user=user.get_name())
        except corrections.CorrectionRefused as exc:
            raise HTTPException(409, str(exc)) from None
        return RedirectResponse(
            f"../../letters?status={'released' if action == 'resend' else 'paper'}", 303
        )

    @app.get("/runs/{dag_id}/{run_id}/proposal", dependencies=[_read_run])
    def proposal(
        dag_id: str,
        run_id: str,
        error: str = "",
        format: str = Query("html", pattern="^(html|json)$"),
    ):
        found = screens.run_proposal(dag_id, run_id)
        if format == "json":
            if found is None:
                raise HTTPException(404, f"{dag_id} run {run_id!r} has no proposal")
            run = found["run"]
            return JSONResponse(
                {
                    "approval": run.approval,
                    "approval_by": run.approval_by,
                    "approval_at": run.approval_at.isoformat() if run.approval_at else None,
                    "levels": found["proposal"].get("levels", {}),
                    "letters": found["letters"],
                }
            )
        page = _pages.get_template("proposal.html").render(
            dag_id=dag_id, run_key=run_id, found=found, error=error
        )
        return HTMLResponse(page, status_code=200 if found is not None else 404)

    @app.post("/runs/{dag_id}/{run_id}/proposal", dependencies=[_decide_run])
    def decide(
        request: Request,
        dag_id: str,
        run_id: str,
        user: GetUserDep,
        decision: str = Form(..., pattern="^(Approve|Reject)$"),
        exclude: list[str] = NO_PARTNERS,
    ):
        _same_origin(request)
        found = screens.run_proposal(dag_id, run_id)
        if found is None or found["run"].approval != "waiting":
            raise HTTPException(409, f"{dag_id} run {run_id!r} is not waiting for approval")
        numbers = approval.excluded_numbers(exclude)
        if unknown := approval.unknown_partners(found["run"].run_id, numbers):
            message = "exclude: no letter in this run for partner " + ", ".join(unknown)
            return RedirectResponse(f"proposal?{urlencode({'error': message})}", 303)
        _respond(dag_id, run_id, user, decision, numbers)
        # the run writes the decision when its task resumes, moments later
        return RedirectResponse(f"letters?answered={decision.lower()}d", 303)

    @app.get("/runs/{dag_id}/{run_id}/print-batch.pdf", dependencies=[_read_run])
    def print_batch(dag_id: str, run_id: str):
        run = screens.run_of(dag_id, run_id)
        if run is None or not run[1]:
            raise HTTPException(404, "this run has no print batch")
        return _download(run[1], f"print-batch-{run[0]}.pdf")

    # one-click unsubscribe (RFC 8058): no login, the signed token is the authority
    @app.get("/unsubscribe/{token}")
    def unsubscribe_page(token: str):
        found = _recipient(token)
        page = _pages.get_template("unsubscribe.html").render(address=found, done=False)
        return HTMLResponse(page, status_code=200 if found else 404)

    @app.post("/unsubscribe/{token}")
    def unsubscribe_now(token: str):
        from erpmail.campaigns import unsubscribe
        from erpmail.core import db

        try:
            recipient = unsubscribe.recipient_of(token)
        except unsubscribe.BadToken:
            raise HTTPException(404, "no such unsubscribe link") from None
        with db.transaction() as cur:
            address = unsubscribe.suppress(cur, recipient, "one_click")
        if address is None:
            raise HTTPException(404, "no such unsubscribe link")
        page = _pages.get_template("unsubscribe.html").render(address=address, done=True)
        return HTMLResponse(page)

    @app.get("/outbox", dependencies=[_read_outbox])
    def outbox(format: str = Query("html", pattern="^(html|json)$")):
        accounts, failed = screens.outbox_accounts(), screens.outbox_failed()
        if format == "json":
            keys = ("queued", "waiting", "sending", "failed", "sent_today", "bounced")
            return JSONResponse(
                {
                    "accounts": [
                        {
                            "name": a[1],
                            "next_send_at": a[5].isoformat(),
                            **dict(zip(keys, a[6:], strict=True)),
                        }
                        for a in accounts
                    ],
                    "failed": [
                        {"id": f[0], "account": f[1], "reply": f[9] or f[7]} for f in failed
                    ],
                }
            )
        return HTMLResponse(
            _pages.get_template("outbox.html").render(accounts=accounts, failed=failed)
        )

    @app.post("/outbox/{outbox_id}/retry", dependencies=[_send_outbox])
    def retry(request: Request, outbox_id: int, user: GetUserDep):
        _same_origin(request)
        if not screens.retry_now(outbox_id, user=user.get_name()):
            raise HTTPException(409, f"outbox message {outbox_id} is not queued or failed")
        return RedirectResponse("../../outbox", 303)

    @app.get("/mail/unlinked", dependencies=[_read_mail])
    def unlinked(format: str = Query("html", pattern="^(html|json)$")):
        rows = screens.unlinked_mail()
        if format == "json":
            keys = ("id", "location", "from", "subject", "received", "status", "failure")
            return JSONResponse(
                [dict(zip(keys, [*r[:4], r[4].isoformat(), *r[5:7]], strict=True)) for r in rows]
            )
        return HTMLResponse(_pages.get_template("unlinked.html").render(mails=rows))

    @app.get("/mail/{mail_id}", dependencies=[_read_mail])
    def one_mail(mail_id: int, q: str = Query("", max_length=100), error: str = ""):
        found = screens.mail(mail_id)
        if found is None:
            raise HTTPException(404, f"no received mail {mail_id}")
        page = _pages.get_template("mail.html").render(
            mail=found,
            query=q,
            partners=screens.find_partners(q),
            types=linking.ENTITY_TYPES,
            error=error,
        )
        return HTMLResponse(page)

    @app.post("/mail/{mail_id}/link", dependencies=[_link_mail])
    def link(
        request: Request,
        mail_id: int,
        user: GetUserDep,
        entity_type: str = Form(...),
        number: str = Form(..., max_length=100),
    ):
        _same_origin(request)
        try:
            screens.link(mail_id, entity_type, number, user=user.get_name())
        except ValueError as exc:  # the field and the record are named in the message
            return RedirectResponse(f"../{mail_id}?{urlencode({'error': str(exc)})}", 303)
        return RedirectResponse("../unlinked", 303)

    return app


def _respond(dag_id: str, run_id: str, user, decision: str, excluded: tuple[str, ...]) -> None:
    """Answer the run's approval request as Airflow's Required Actions do (the same call:
    the respondent check, the stored response, the task resumed)."""
    from airflow.api_fastapi.core_api.datamodels.hitl import UpdateHITLDetailPayload
    from airflow.api_fastapi.core_api.routes.public.hitl import update_hitl_detail
    from airflow.utils.session import create_session

    payload = UpdateHITLDetailPayload(
        chosen_options=[decision], params_input={"exclude": list(excluded)}
    )
    with create_session() as session:
        update_hitl_detail(
            dag_id=dag_id,
            dag_run_id=run_id,
            task_id=APPROVAL_TASK,
            update_hitl_detail_payload=payload,
            user=user,
            session=session,
            map_index=-1,
        )


def _recipient(token: str) -> str | None:
    """The address an unsubscribe token names, or None."""
    from erpmail.campaigns import unsubscribe
    from erpmail.core import db

    try:
        recipient = unsubscribe.recipient_of(token)
    except unsubscribe.BadToken:
        return None
    with db.transaction() as cur:
        cur.execute(unsubscribe.RECIPIENT, (recipient,))
        row = cur.fetchone()
    return row[0] if row else None


def _same_origin(request: Request) -> None:
    """Refuse a form posted from another site (the session cookie would come along)."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if origin and origin.split("/")[2:3] != [request.headers.get("host")]:
        raise HTTPException(403, "a form from another site")


def _download(key: str, name: str) -> Response:
    media = {"pdf": "application/pdf", "eml": "message/rfc822"}[name.rsplit(".", 1)[1]]
    return Response(
        archive.read(key),
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


def _as_json(found: screens.RunLetters) -> dict:
    return {
        "run_id": found.run_id,
        "key_date": found.key_date.isoformat(),
        "dry_run": found.dry_run,
        "status": found.status,
        "counts": found.counts,
        "bounced": found.bounced,
        "print_batch": found.print_batch,
        "letters": [
            {
                "id": x.id,
                "partner": x.partner,
                "level": x.level,
                "totals": x.totals,
                "status": x.status,
                "reason": x.reason,
                "recipient": x.recipient,
                "sent_at": x.sent_at.isoformat() if x.sent_at else None,
                "mail_status": x.mail_status,
                "sent_uncertain": x.sent_uncertain,
            }
            for x in found.letters
        ],
    }
