"""Templates for every document erpmail sends, per language, with signatures.

Layout: ``include/templates/<document>/<lang>/{subject.txt, body.txt, body.html, letter.html}``
and ``include/templates/signatures/{central, by-address/<address>, by-project/<number>}``.
HTML is autoescaped, text is not; a missing variable is an error naming template, language
and variable. The letter context contract (``LetterContext``) is what a document run fills.
"""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import jinja2
from babel import Locale
from babel.dates import format_date, format_datetime
from babel.numbers import format_currency, format_decimal
from markupsafe import Markup

from erpmail.core.db import ROOT

TEMPLATES_DIR = ROOT / "include" / "templates"
DEFAULT_LANGUAGE = "de"
# Babel locale per correspondence language: the country decides separators and symbol place.
LOCALES = {"de": "de_DE", "en": "en_GB", "nl": "nl_NL"}
PARTS = ("subject.txt", "body.txt", "body.html", "letter.html")
SIGNATURES = "signatures"
_IMG_SRC = re.compile(r'(<img\b[^>]*?\bsrc=")([^"]+)(")', re.IGNORECASE)
_UNDEFINED = re.compile(r"'([^']+)' is undefined|has no attribute '([^']+)'")


class TemplateError(Exception):
    """A document could not be rendered; the message names template, language and cause."""

    def __init__(self, message: str, *, template: str, language: str, variable: str | None = None):
        super().__init__(message)
        self.template = template
        self.language = language
        self.variable = variable


# --- the letter context contract -------------------------------------------------------


@dataclass(frozen=True)
class Company:
    """The sending company as printed in the letterhead and footer."""

    code: str
    name: str
    street: str = ""
    postcode: str = ""
    city: str = ""
    country: str = "DE"
    email: str | None = None
    phone: str | None = None
    iban: str | None = None


@dataclass(frozen=True)
class Partner:
    """The addressee. ``language`` None means: the company's default language."""

    id: int
    number: str
    name: str
    street: str = ""
    postcode: str = ""
    city: str = ""
    country: str = "DE"
    email: str | None = None
    language: str | None = None


@dataclass(frozen=True)
class LetterItem:
    """One open item on a letter; ``level`` is the dunning level of this item (None elsewhere)."""

    doc_number: str
    doc_type: str  # 'invoice' | 'credit_note'
    doc_date: date
    due_date: date
    amount: Decimal
    open_amount: Decimal
    currency: str
    days_overdue: int = 0
    level: int | None = None


@dataclass(frozen=True)
class LetterTexts:
    """Per level and language texts from ``erp.dunning_texts`` (or the document's own)."""

    subject: str
    intro: str
    closing: str


@dataclass(frozen=True)
class LetterContext:
    """Everything a letter template may use; filled by the document run (dunning, statements).

    ``totals`` are the open amounts per currency plus ``fee`` in ``fee_currency`` (the fee of
    the highest level on a dunning letter). ``extra`` carries document-specific values.
    ``texts`` None: the document's templates carry their own texts (they set ``texts``).
    """

    document: str  # template folder, e.g. 'dunning'
    company: Company
    partner: Partner
    key_date: date
    items: Sequence[LetterItem]
    texts: LetterTexts | None
    reference: str  # printed letter reference, e.g. '<run>-<partner number>'
    level: int | None = None
    fee: Decimal = Decimal("0.00")
    fee_currency: str = "EUR"
    sender: str | None = None  # From address: picks the signature
    sender_name: str = ""
    project: str | None = None  # project number: picks the signature when no sender one
    created: datetime | None = None  # PDF creation date; None: the render time
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def totals(self) -> dict[str, Decimal]:
        """Open amount per currency, fee included, currencies sorted."""
        sums: dict[str, Decimal] = {}
        for item in self.items:
            sums[item.currency] = sums.get(item.currency, Decimal("0.00")) + item.open_amount
        if self.fee:
            sums[self.fee_currency] = sums.get(self.fee_currency, Decimal("0.00")) + self.fee
        return dict(sorted(sums.items()))

    def variables(self) -> dict[str, Any]:
        """The names templates see."""
        return {
            "document": self.document,
            "company": self.company,
            "partner": self.partner,
            "key_date": self.key_date,
            "items": list(self.items),
            "texts": self.texts,
            "reference": self.reference,
            "level": self.level,
            "fee": self.fee,
            "fee_currency": self.fee_currency,
            "totals": self.totals,
            "sender": self.sender,
            "sender_name": self.sender_name,
            "project": self.project,
            "created": self.created,
            **self.extra,
        }


# --- rendering -------------------------------------------------------------------------


@dataclass(frozen=True)
class InlineImage:
    """An image shown inside the HTML body, referenced as ``cid:<cid>``."""

    cid: str
    filename: str
    data: bytes
    mime_type: str


@dataclass(frozen=True)
class Signature:
    """A rendered signature: HTML (images rewritten to ``cid:``), text, and its images."""

    source: str  # the folder it came from, e.g. 'signatures/central'
    html: Markup
    text: str
    images: tuple[InlineImage, ...] = ()


@dataclass(frozen=True)
class Rendered:
    """One document in one language; ``fallback_from`` is the language asked for when missing."""

    document: str
    language: str
    fallback_from: str | None
    subject: str
    text: str
    html: str | None
    letter_html: str | None
    signature: Signature | None


def _money(ctx: jinja2.runtime.Context, amount: Decimal, currency: str) -> str:
    if isinstance(amount, float):
        raise TypeError("money is Decimal, never float")
    return format_currency(Decimal(amount), currency, locale=_locale(ctx))


def _number(ctx: jinja2.runtime.Context, amount: Decimal) -> str:
    return format_decimal(Decimal(amount), format="#,##0.00", locale=_locale(ctx))


def _date(ctx: jinja2.runtime.Context, value: date, format: str = "medium") -> str:
    if isinstance(value, datetime):
        return format_datetime(value, format=format, locale=_locale(ctx))
    return format_date(value, format=format, locale=_locale(ctx))


def _country(ctx: jinja2.runtime.Context, code: str) -> str:
    return Locale.parse(_locale(ctx)).territories.get(code, code)


def _locale(ctx: jinja2.runtime.Context) -> str:
    language = ctx.get("language") or DEFAULT_LANGUAGE
    return LOCALES.get(language, language)


def _autoescape(name: str | None) -> bool:
    return bool(name) and name.endswith(".html")


class Templates:
    """The template tree (default ``include/templates``) with its Jinja2 environment."""

    def __init__(self, root: Path = TEMPLATES_DIR, default_language: str = DEFAULT_LANGUAGE):
        self.root = Path(root)
        self.default_language = default_language
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(self.root)),
            undefined=jinja2.StrictUndefined,
            autoescape=_autoescape,
            keep_trailing_newline=False,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["money"] = jinja2.pass_context(_money)
        self.env.filters["number"] = jinja2.pass_context(_number)
        self.env.filters["date"] = jinja2.pass_context(_date)
        self.env.filters["country"] = jinja2.pass_context(_country)

    def language_for(self, document: str, wanted: str | None) -> tuple[str, str | None]:
        """The language to render ``document`` in and, when it fell back, the one asked for."""
        if wanted and (self.root / document / wanted).is_dir():
            return wanted, None
        if (self.root / document / self.default_language).is_dir():
            return self.default_language, wanted
        raise TemplateError(
            f"document {document!r} has no templates in {wanted or '-'!r} nor in the default "
            f"language {self.default_language!r} under {self.root}",
            template=document,
            language=wanted or self.default_language,
        )

    def has(self, name: str) -> bool:
        """Whether a template exists (path relative to the root)."""
        return (self.root / name).is_file()

    def render(self, name: str, language: str, variables: Mapping[str, Any]) -> str:
        """Render one template (path relative to the root) or raise ``TemplateError``."""
        try:
            template = self.env.get_template(name)
            return template.render({**variables, "language": language})
        except jinja2.UndefinedError as exc:
            match = _UNDEFINED.search(str(exc))
            variable = (match.group(1) or match.group(2)) if match else None
            raise TemplateError(
                f"template {name} (language {language}): variable {variable or '?'} is "
                f"undefined ({exc})",
                template=name,
                language=language,
                variable=variable,
            ) from exc
        except jinja2.TemplateNotFound as exc:
            raise TemplateError(
                f"template {name} (language {language}): template {exc.name} not found",
                template=name,
                language=language,
            ) from exc
        except (jinja2.TemplateError, TypeError, ValueError, ArithmeticError) as exc:
            raise TemplateError(
                f"template {name} (language {language}): {type(exc).__name__}: {exc}",
                template=name,
                language=language,
            ) from exc

    def render_document(
        self,
        document: str,
        variables: Mapping[str, Any],
        *,
        language: str | None,
        sender: str | None = None,
        project: str | None = None,
    ) -> Rendered:
        """Subject, text body, and HTML body and letter HTML where the document has them.

        ``language`` is the partner's language or None; a missing language falls back to the
        default and ``fallback_from`` says so.
        """
        used, fallback_from = self.language_for(document, language)
        folder = f"{document}/{used}"
        signature = self.signature(
            sender=sender, project=project, language=used, variables=variables
        )
        values = {**variables, "signature": signature}
        subject = self.render(f"{folder}/subject.txt", used, values).strip()
        if "\r" in subject or "\n" in subject:
            raise TemplateError(
                f"template {folder}/subject.txt (language {used}): subject spans several lines",
                template=f"{folder}/subject.txt",
                language=used,
            )
        text = self.render(f"{folder}/body.txt", used, values)
        html = (
            self.render(f"{folder}/body.html", used, values)
            if self.has(f"{folder}/body.html")
            else None
        )
        letter_html = None
        if self.has(f"{folder}/letter.html"):
            letter_html = self.render(f"{folder}/letter.html", used, values)
        return Rendered(document, used, fallback_from, subject, text, html, letter_html, signature)

    def render_letter(self, context: LetterContext) -> Rendered:
        """``render_document`` for a ``LetterContext``: its document, partner language, sender."""
        return self.render_document(
            context.document,
            context.variables(),
            language=context.partner.language,
            sender=context.sender,
            project=context.project,
        )

    def signature_folder(self, *, sender: str | None, project: str | None) -> str:
        """The signature folder: by sender address, else by project, else central."""
        candidates = []
        if sender:
            candidates.append(f"{SIGNATURES}/by-address/{sender.strip().lower()}")
        if project:
            candidates.append(f"{SIGNATURES}/by-project/{project.strip()}")
        for folder in candidates:
            if "/.." in folder or "\\" in folder:
                continue  # an address or number is never a path
            if (self.root / folder / "signature.txt").is_file():
                return folder
        return f"{SIGNATURES}/central"

    def signature(
        self,
        *,
        sender: str | None,
        project: str | None,
        language: str,
        variables: Mapping[str, Any] | None = None,
    ) -> Signature | None:
        """The rendered signature, or None when there is not even a central one.

        A folder holds ``signature.txt`` and ``signature.html`` (or ``signature.<lang>.*``);
        images referenced by a relative ``src`` in the HTML become inline ``cid:`` images.
        """
        folder = self.signature_folder(sender=sender, project=project)
        if not self.has(f"{folder}/signature.txt"):
            return None

        def pick(ext: str) -> str | None:
            for name in (f"{folder}/signature.{language}.{ext}", f"{folder}/signature.{ext}"):
                if self.has(name):
                    return name
            return None

        values = {**(variables or {})}
        text = self.render(pick("txt"), language, values).strip("\n")
        html_name = pick("html")
        html = self.render(html_name, language, values) if html_name else ""
        images: list[InlineImage] = []

        def inline(match: re.Match[str]) -> str:
            src = match.group(2)
            if ":" in src or src.startswith("/"):
                return match.group(0)  # absolute and cid: URLs are left alone, never fetched
            path = (self.root / folder / src).resolve()
            if not path.is_relative_to((self.root / SIGNATURES).resolve()) or not path.is_file():
                raise TemplateError(
                    f"signature {html_name}: image {src!r} not found under {folder}",
                    template=html_name or folder,
                    language=language,
                )
            cid = f"sig{len(images) + 1}.{path.stem}@erpmail"
            mime_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            images.append(InlineImage(cid, path.name, path.read_bytes(), mime_type))
            return f"{match.group(1)}cid:{cid}{match.group(3)}"

        html = _IMG_SRC.sub(inline, html)
        return Signature(folder, Markup(html), text, tuple(images))


_default: Templates | None = None


def default() -> Templates:
    """The templates under ``include/templates``, created once per process."""
    global _default
    if _default is None:
        _default = Templates()
    return _default


__all__ = [
    "DEFAULT_LANGUAGE",
    "PARTS",
    "TEMPLATES_DIR",
    "Company",
    "InlineImage",
    "LetterContext",
    "LetterItem",
    "LetterTexts",
    "Partner",
    "Rendered",
    "Signature",
    "TemplateError",
    "Templates",
    "default",
]
