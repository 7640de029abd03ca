"""Templates: language choice and fallback, locale formats, escaping, errors, signatures."""

from __future__ import annotations

import shutil
from dataclasses import replace
from datetime import date, datetime
from decimal import Decimal

import pytest

from erpmail.documents.templates import (
    TEMPLATES_DIR,
    Company,
    LetterContext,
    LetterItem,
    LetterTexts,
    Partner,
    TemplateError,
    Templates,
)
from tests.lettercontexts import load_contexts

SUBJECT_WORD = {"de": "Kundennummer", "en": "customer number", "nl": "klantnummer"}


def make_context(
    name: str = "Müller GmbH", language: str | None = "de", **changes
) -> LetterContext:
    company = Company("DEMO", "Muster Handels GmbH", "Friedrichstraße 100", "10117", "Berlin")
    items = [
        LetterItem(
            "RE1-001",
            "invoice",
            date(2024, 1, 2),
            date(2024, 1, 16),
            Decimal("1234.56"),
            Decimal("1234.56"),
            "EUR",
            45,
            3,
        ),
        LetterItem(
            "RE1-002",
            "invoice",
            date(2024, 2, 1),
            date(2024, 2, 15),
            Decimal("200.00"),
            Decimal("100.00"),
            "CHF",
            15,
            1,
        ),
    ]
    context = LetterContext(
        document="dunning",
        company=company,
        partner=Partner(
            1,
            "000123",
            name,
            "Hauptstraße 1",
            "10115",
            "Berlin",
            "DE",
            "info@example.com",
            language,
        ),
        key_date=date(2024, 3, 1),
        items=items,
        texts=LetterTexts("Letzte Mahnung", "trotz unserer Erinnerungen …", "Bitte zahlen Sie."),
        reference="R7-000123",
        level=3,
        fee=Decimal("10.00"),
        fee_currency="EUR",
    )
    return replace(context, **changes)


def test_seeded_partners_get_their_language(seeded_db):
    contexts = load_contexts(seeded_db)
    templates = Templates()
    seen = set()
    for language in ("de", "en", "nl", None):
        context = next(c for c in contexts if c.partner.language == language)
        rendered = templates.render_letter(context)
        expected = language or "de"
        assert rendered.language == expected
        assert rendered.fallback_from is None
        assert SUBJECT_WORD[expected] in rendered.subject
        assert context.texts.subject in rendered.subject
        assert f'<html lang="{expected}">' in rendered.letter_html
        seen.add(language)
    assert seen == {"de", "en", "nl", None}


def test_missing_dutch_template_falls_back_to_german_and_says_so(tmp_path):
    root = tmp_path / "templates"
    shutil.copytree(TEMPLATES_DIR, root)
    shutil.rmtree(root / "dunning" / "nl")
    rendered = Templates(root).render_letter(make_context(language="nl"))
    assert rendered.language == "de"
    assert rendered.fallback_from == "nl"
    assert "Kundennummer" in rendered.subject
    # and with the Dutch folder back, Dutch it is
    dutch = Templates().render_letter(make_context(language="nl"))
    assert (dutch.language, dutch.fallback_from) == ("nl", None)


def test_no_template_at_all_names_document_and_language():
    with pytest.raises(TemplateError, match="'statement_xyz'.*'fr'"):
        Templates().render_document("statement_xyz", {}, language="fr")


@pytest.mark.parametrize(
    ("language", "money", "total", "day"),
    [
        ("de", "1.234,56\xa0€", "1.244,56\xa0€", "02.01.2024"),
        ("en", "€1,234.56", "€1,244.56", "2 Jan 2024"),
        ("nl", "€\xa01.234,56", "€\xa01.244,56", "2 jan 2024"),
    ],
)
def test_money_and_dates_per_locale(language, money, total, day):
    rendered = Templates().render_letter(make_context(language=language))
    assert money in rendered.letter_html
    assert day in rendered.letter_html
    assert total in rendered.letter_html and total in rendered.text and total in rendered.html


def test_totals_per_currency_include_the_fee():
    context = make_context()
    assert context.totals == {"CHF": Decimal("100.00"), "EUR": Decimal("1244.56")}
    html = Templates().render_letter(context).letter_html
    assert "Summe EUR" in html and "Summe CHF" in html and "Mahngebühr" in html
    assert "1.244,56\xa0€" in html and "100,00\xa0CHF" in html


def test_float_money_is_refused():
    variables = make_context().variables()
    variables["fee"] = 10.0
    with pytest.raises(TemplateError, match="dunning/de/letter.html.*float"):
        Templates().render_document("dunning", variables, language="de")


def test_script_in_a_name_is_escaped_in_html_not_in_text():
    name = "<script>alert(1)</script> & Söhne"
    rendered = Templates().render_letter(make_context(name=name))
    assert "<script>" not in rendered.letter_html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; Söhne" in rendered.letter_html
    assert "<script>" not in rendered.html
    autoreply = Templates().render_document(
        "autoreply", {"TICKET": "T000001", "SUBJECT": name, "BETREFF": name}, language="de"
    )
    assert "<script>" not in autoreply.html and "&lt;script&gt;" in autoreply.html
    assert name in autoreply.text  # text stays text: nothing to escape
    assert name in autoreply.subject


def test_missing_variable_names_template_language_and_variable():
    with pytest.raises(TemplateError) as info:
        Templates().render_document("autoreply", {"TICKET": "T1", "SUBJECT": "x"}, language="de")
    error = info.value
    assert error.variable == "BETREFF"
    assert error.language == "de"
    assert error.template == "autoreply/de/subject.txt"
    assert "autoreply/de/subject.txt" in str(error) and "BETREFF" in str(error)

    variables = make_context().variables()
    del variables["reference"]
    with pytest.raises(TemplateError, match=r"dunning/en/.*language en.*reference"):
        Templates().render_document("dunning", variables, language="en")


def test_autoreply_placeholders_per_language():
    values = {
        "TICKET": "T000042",
        "SUBJECT": "Frage zur Rechnung RE-1",
        "BETREFF": "Frage zur Rechnung RE-1",
    }
    for language, word in (
        ("de", "Eingangsbestätigung"),
        ("en", "We received"),
        ("nl", "Ontvangst"),
    ):
        rendered = Templates().render_document("autoreply", values, language=language)
        assert rendered.subject.startswith(word)
        assert "[T000042]" in rendered.subject and "Frage zur Rechnung RE-1" in rendered.subject
        assert "T000042" in rendered.text and "T000042" in rendered.html
        assert rendered.letter_html is None


def test_the_unlinked_mail_digest_lists_every_mail_in_its_language():
    def event(n, sender, subject, location):
        payload = {"mail_id": n, "received_at": datetime(2024, 3, 1, 9, n), "from": sender,
                   "subject": subject, "location": location, "failure": None}  # fmt: skip
        return {"payload": payload}

    events = [
        event(1, "a@example.com", "Rechnung März", "INBOX"),
        event(2, "b@example.com", "<b>Hallo</b>", "support"),
    ]
    de = Templates().render_document("events/mail_unlinked", {"events": events}, language="de")
    assert de.subject == "2 nicht zugeordnete E-Mails"
    assert "Rechnung März" in de.text and "b@example.com" in de.text and "#2  " in de.text
    assert "&lt;b&gt;Hallo&lt;/b&gt;" in de.html
    nl = Templates().render_document("events/mail_unlinked", {"events": events[:1]}, language="nl")
    assert (nl.language, nl.fallback_from) == ("nl", None)
    assert nl.subject == "1 niet gekoppelde e-mail in INBOX"
    fr = Templates().render_document("events/mail_unlinked", {"events": events[:1]}, language="fr")
    assert (fr.language, fr.fallback_from) == ("de", "fr")


def test_signature_by_sender_then_project_then_central():
    templates = Templates()
    by_address = templates.signature(
        sender="Mahnwesen@Muster-Handels.example.com", project="10", language="de"
    )
    assert by_address.source == "signatures/by-address/mahnwesen@muster-handels.example.com"
    assert "Forderungsmanagement" in by_address.text
    by_project = templates.signature(sender="someone@else.example.com", project="10", language="de")
    assert by_project.source == "signatures/by-project/10"
    central = templates.signature(sender="someone@else.example.com", project="99", language="de")
    assert central.source == "signatures/central"
    assert "Geschäftsführer" in central.text
    assert "Managing director" in templates.signature(sender=None, project=None, language="en").text
    # an address is never a path
    assert templates.signature(
        sender="../central", project="../../letter", language="de"
    ).source == ("signatures/central")


def test_signature_images_become_inline_cid_parts():
    signature = Templates().signature(sender=None, project=None, language="de")
    (image,) = signature.images
    assert image.mime_type == "image/png" and image.data.startswith(b"\x89PNG")
    assert f'src="cid:{image.cid}"' in signature.html
    assert 'src="logo.png"' not in signature.html
    # the by-address signature shares the central logo through a relative path
    (shared,) = (
        Templates()
        .signature(sender="mahnwesen@muster-handels.example.com", project=None, language="de")
        .images
    )
    assert shared.data == image.data


def test_signature_image_outside_signatures_is_refused(tmp_path):
    root = tmp_path / "templates"
    shutil.copytree(TEMPLATES_DIR, root)
    (root / "signatures/central/signature.html").write_text('<img src="../../letter/logo.svg">')
    with pytest.raises(TemplateError, match="letter/logo.svg"):
        Templates(root).signature(sender=None, project=None, language="de")


def test_dunning_body_carries_the_signature():
    rendered = Templates().render_letter(
        make_context(sender="mahnwesen@muster-handels.example.com")
    )
    assert rendered.signature.source.endswith("mahnwesen@muster-handels.example.com")
    assert "-- \nForderungsmanagement" in rendered.text
    assert "cid:" in rendered.html
