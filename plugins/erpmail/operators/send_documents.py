"""The parts of a documents-on-demand run that differ from the shared document run
(``erpmail.operators.document_run``): the form's document references, and the render step
that lays out each letter's documents (``erpmail.documents.document_forms``)."""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param

from erpmail.operators.document_run import (
    PARTNER_NUMBER,
    RenderBatchOperator,
    library_chatter_silenced,
)

# Kept in step with erpmail.documents.on_demand.REFERENCE_KINDS (not imported: a DAG file's
# parse stays free of the document modules).
REFERENCE_KINDS = {
    "invoice": "Invoice (erp.documents)",
    "offer": "Offer (erp.documents)",
    "order_confirmation": "Order confirmation (erp.documents)",
    "payment_advice": "Payment advice reprint: the payment run's number",
    "archive": "An archived PDF: its key in the document store",
}
DOCUMENT_NUMBER = "^[0-9A-Za-z_./-]{1,40}$"
# a relative key of plain segments, none of them "." or ".."
ARCHIVE_KEY = r"^(?!(.*/)?\.\.?(/|$))[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$"
ADDRESS = "^[^@\\s]+@[^@\\s]+$"
MAX_DOCUMENTS = 500


def documents_param() -> dict[str, Param]:
    """``documents``: the references to send, each refused at trigger time when malformed."""
    reference = {
        "type": "object",
        "additionalProperties": False,
        "required": ["kind"],
        "properties": {
            "kind": {"type": "string", "enum": list(REFERENCE_KINDS)},
            "number": {"type": "string", "pattern": DOCUMENT_NUMBER},
            "path": {"type": "string", "maxLength": 500, "pattern": ARCHIVE_KEY},
            "partner": {"type": ["null", "string"], "pattern": PARTNER_NUMBER},
            "to": {"type": ["null", "string"], "maxLength": 254, "pattern": ADDRESS},
        },
        # an archived PDF is named by its key, every other kind by its number
        "if": {"properties": {"kind": {"const": "archive"}}},
        "then": {"required": ["path"], "not": {"required": ["number"]}},
        "else": {"required": ["number"], "not": {"required": ["path"]}},
    }
    return {
        "documents": Param(
            type="array",
            minItems=1,
            maxItems=MAX_DOCUMENTS,
            items=reference,
            title="Documents",
            description="The documents to send, as a JSON list. Each: kind ("
            + ", ".join(f"{k}: {v}" for k, v in REFERENCE_KINDS.items())
            + "); 'number' (or 'path' for an archived PDF); optional 'partner' (a partner "
            "number: only this payee's advice, or whose an archived PDF is); optional 'to' "
            "(an address instead of the partner's). One mail per partner with all of its "
            'documents. E.g. [{"kind": "invoice", "number": "RE-1001"}].',
        )
    }


class RenderDocumentsOperator(RenderBatchOperator):
    """Render one batch of a documents-on-demand run: each letter's documents (an ERP
    document's form, a payment advice again, an archived PDF as it is) into the letter's
    archived PDF (``archived``), a document that fails ``failed`` alone naming kind and
    number. Returns the counts by letter status.

    :param kind: the document kind, ``"on_demand"`` (templated)
    :param erp_run: the run's id (templated)
    :param batch: the batch number (templated)
    """

    def execute(self, context: Any) -> dict[str, int]:
        from erpmail.documents import document_forms

        with library_chatter_silenced():
            return document_forms.render_batch(int(self.erp_run), int(self.batch))
