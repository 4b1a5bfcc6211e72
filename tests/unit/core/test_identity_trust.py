"""Identity trust (issue 13): a browser identity is a claim, verified sources win, every resolution has a source."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.core.events import VERIFIED_BY_SIGNATURE, VERIFIED_HEADER, TrackedEvent, build_event
from pipeline.core.identity import (BROWSER_SOURCES, VERIFIED_SOURCES, IdentitySnapshot, IdType as T,
                                    ImportedIdentity, apply_identity_events, import_identity,
                                    resolve_visitor, trust_config)

from .helpers import T0, payload, raw

SALT = "pepper"
EMPTY = IdentitySnapshot("s1")
CRM = {"company_domain": "acme.com", "seniority": "director", "title": "Head of Ops"}


def identify(t: int, *, signed: bool = False, visitor: str = "v1", **kw: Any) -> TrackedEvent:
    r = raw("identify", true_tstamp=t, **kw)
    headers = {VERIFIED_HEADER: VERIFIED_BY_SIGNATURE} if signed else {}
    return build_event(r, payload([r], visitor_id=visitor, collector_tstamp=t + 100, headers=headers))


def traits(**kw: str) -> str:
    import json
    return json.dumps(kw)


def test_the_verified_flag_comes_only_from_the_collector_header() -> None:
    assert identify(T0, signed=True).verified
    assert not identify(T0).verified
    r = raw("identify", true_tstamp=T0)
    assert not build_event(r, payload([r], headers={VERIFIED_HEADER: "yes"})).verified


def test_a_browser_identify_is_a_claim_with_the_lower_confidence() -> None:
    r = apply_identity_events(EMPTY, [identify(T0, email="jane@acme.com")], SALT)
    res = resolve_visitor(r.snapshot, "v1")
    assert res.source == "identify" and res.confidence == 0.5
    assert "claimed" in res.evidence[0].detail


def test_a_signed_identify_is_verified() -> None:
    r = apply_identity_events(EMPTY, [identify(T0, signed=True, email="jane@acme.com")], SALT)
    res = resolve_visitor(r.snapshot, "v1")
    assert res.source == "server" and res.confidence == 1.0 and "verified" in res.evidence[0].detail


def test_confidence_per_site() -> None:
    cfg = trust_config(browser_confidence=0.3, verified_confidence=0.9)
    claimed = apply_identity_events(EMPTY, [identify(T0, email="jane@acme.com")], SALT, cfg)
    assert resolve_visitor(claimed.snapshot, "v1", cfg).confidence == 0.3
    signed = apply_identity_events(EMPTY, [identify(T0, signed=True, email="jane@acme.com")], SALT, cfg)
    assert resolve_visitor(signed.snapshot, "v1", cfg).confidence == 0.9
    assert set(cfg.link_confidence) >= BROWSER_SOURCES | VERIFIED_SOURCES


def test_an_unlinked_visitor_has_no_source() -> None:
    res = resolve_visitor(EMPTY, "nobody")
    assert res.person is None and res.confidence == 0 and res.source is None


def test_a_signed_call_upgrades_a_claimed_link() -> None:
    claimed = apply_identity_events(EMPTY, [identify(T0, email="jane@acme.com")], SALT)
    signed = apply_identity_events(claimed.snapshot, [identify(T0 + 1, signed=True, email="jane@acme.com")], SALT)
    res = resolve_visitor(signed.snapshot, "v1")
    assert res.source == "server" and res.confidence == 1.0
    assert res.person is not None and res.person.person_id == claimed.person_id


def test_a_browser_claim_never_downgrades_a_verified_link() -> None:
    snap = import_identity(EMPTY, ImportedIdentity(email="jane@acme.com", visitor_ids=("v1",)), tstamp=T0,
                           salt=SALT).snapshot
    r = apply_identity_events(snap, [identify(T0 + 1, email="jane@acme.com")], SALT)
    assert resolve_visitor(r.snapshot, "v1").source == "import"


def test_browser_claiming_an_imported_email_gets_only_the_claim_confidence() -> None:
    snap = import_identity(EMPTY, ImportedIdentity(email="ceo@bigcorp.com", profile=CRM), tstamp=T0,
                           salt=SALT).snapshot
    r = apply_identity_events(snap, [identify(T0 + 1, visitor="attacker", email="ceo@bigcorp.com")], SALT)
    res = resolve_visitor(r.snapshot, "attacker")
    assert res.person is not None and res.confidence == 0.5 and res.source == "identify"


@pytest.mark.parametrize("field", ["company_domain", "seniority", "title"])
def test_browser_traits_never_overwrite_imported_fields(field: str) -> None:
    snap = import_identity(EMPTY, ImportedIdentity(email="jane@acme.com", visitor_ids=("v1",), profile=CRM),
                           tstamp=T0, salt=SALT).snapshot
    forged = {"company_domain": "evil.example", "seniority": "c_level", "title": "CEO", "department": "sales"}
    r = apply_identity_events(snap, [identify(T0 + 1, email="jane@acme.com", properties_json=traits(**forged))],
                              SALT)
    record = r.snapshot.persons[r.person_id or ""]
    assert record.profile[field] == CRM[field]
    assert record.profile["department"] == "sales"   # a field the CRM does not have may be claimed
    person = resolve_visitor(r.snapshot, "v1").person
    assert person is not None and getattr(person, field) == CRM[field]


def test_browser_email_domain_does_not_overwrite_the_crm_domain() -> None:
    snap = import_identity(EMPTY, ImportedIdentity(user_id="u1", visitor_ids=("v1",), profile=CRM), tstamp=T0,
                           salt=SALT).snapshot
    r = apply_identity_events(snap, [identify(T0 + 1, identify_user_id="u1", email="x@evil.example")], SALT)
    assert r.snapshot.persons[r.person_id or ""].profile["company_domain"] == "acme.com"


def test_signed_traits_may_update_verified_fields() -> None:
    snap = import_identity(EMPTY, ImportedIdentity(user_id="u1", visitor_ids=("v1",), profile=CRM), tstamp=T0,
                           salt=SALT).snapshot
    r = apply_identity_events(snap, [identify(T0 + 1, signed=True, identify_user_id="u1",
                                              properties_json=traits(title="COO"))], SALT)
    assert r.snapshot.persons[r.person_id or ""].profile["title"] == "COO"


def test_browser_traits_fill_and_update_unverified_fields() -> None:
    first = apply_identity_events(EMPTY, [identify(T0, identify_user_id="u1", properties_json=traits(title="A"))],
                                  SALT)
    second = apply_identity_events(first.snapshot, [identify(T0 + 1, identify_user_id="u1",
                                                             properties_json=traits(title="B"))], SALT)
    assert second.snapshot.persons[second.person_id or ""].profile["title"] == "B"


def test_a_merge_keeps_the_verified_fields_of_the_absorbed_person() -> None:
    # a browser-identified person absorbs an imported (unidentified) one: the CRM field still wins
    older = apply_identity_events(EMPTY, [identify(T0, visitor="v2", identify_user_id="u1",
                                                   properties_json=traits(title="claimed", department="x"))], SALT)
    imported = import_identity(older.snapshot, ImportedIdentity(visitor_ids=("v3",), profile={"title": "CRM title"}),
                               tstamp=T0 + 5, salt=SALT)
    joined = apply_identity_events(imported.snapshot, [identify(T0 + 9, visitor="v3", identify_user_id="u1")], SALT)
    assert joined.person_id == older.person_id and imported.person_id not in joined.snapshot.persons
    record = joined.snapshot.persons[joined.person_id or ""]
    assert record.profile["title"] == "CRM title" and record.profile["department"] == "x"
    assert "title" in record.verified_fields and T.user_id in record.identifiers


# ---- hand-raise: a work email typed into a conversion form (issue 12) ----------------------------

def form(t: int, form_id: str, url: str = "https://www.example.com/demo", **kw: Any) -> TrackedEvent:
    r = raw("form_submit", true_tstamp=t, name=form_id, url=url, **kw)
    return build_event(r, payload([r], visitor_id="v1", collector_tstamp=t + 100))


def site_cfg(**trust: float) -> Any:
    from pipeline.core.scoring_model import default_scoring_model, effective_rules
    intent = effective_rules(default_scoring_model(), None).intent
    return trust_config(**trust, conversions=intent.conversions, non_conversions=intent.non_conversions)


def test_a_conversion_forms_email_is_a_handraise_with_its_own_confidence() -> None:
    cfg = site_cfg()
    r = apply_identity_events(EMPTY, [form(T0, "demo-request", email="jane@acme.com")], SALT, cfg)
    res = resolve_visitor(r.snapshot, "v1", cfg)
    assert res.source == "handraise" and res.confidence == 0.7 and "claimed" in res.evidence[0].detail


@pytest.mark.parametrize("form_id,url", [("support-request", "https://www.example.com/support"),
                                         ("job-application", "https://www.example.com/careers/apply"),
                                         ("report-download", "https://www.example.com/resources/report"),
                                         ("newsletter", "https://www.example.com/blog/post")])
def test_any_other_form_stays_a_plain_claim(form_id: str, url: str) -> None:
    cfg = site_cfg()
    r = apply_identity_events(EMPTY, [form(T0, form_id, url, email="jane@acme.com")], SALT, cfg)
    res = resolve_visitor(r.snapshot, "v1", cfg)
    assert res.source == "form" and res.confidence == 0.5


def test_an_identify_call_is_never_a_handraise() -> None:
    cfg = site_cfg()
    r = apply_identity_events(EMPTY, [identify(T0, email="jane@acme.com")], SALT, cfg)
    assert resolve_visitor(r.snapshot, "v1", cfg).source == "identify"


def test_without_conversion_rules_every_form_is_a_plain_claim() -> None:
    r = apply_identity_events(EMPTY, [form(T0, "demo-request", email="jane@acme.com")], SALT, trust_config())
    assert resolve_visitor(r.snapshot, "v1").source == "form"


def test_a_later_handraise_upgrades_an_earlier_claim_and_a_signed_call_upgrades_both() -> None:
    cfg = site_cfg()
    first = apply_identity_events(EMPTY, [form(T0, "report-download", email="jane@acme.com")], SALT, cfg)
    raised = apply_identity_events(first.snapshot, [form(T0 + 1, "demo-request", email="jane@acme.com")], SALT, cfg)
    res = resolve_visitor(raised.snapshot, "v1", cfg)
    assert res.source == "handraise" and res.person is not None and res.person.person_id == first.person_id
    signed = apply_identity_events(raised.snapshot, [identify(T0 + 2, signed=True, email="jane@acme.com")], SALT, cfg)
    assert resolve_visitor(signed.snapshot, "v1", cfg).source == "server"


def test_the_site_sets_the_handraise_confidence_between_claim_and_verified() -> None:
    from pipeline.settings import IdentityTrustSettings
    assert IdentityTrustSettings(handraise_confidence=0.5).handraise_confidence == 0.5
    with pytest.raises(ValueError, match="browser_confidence must not exceed handraise_confidence"):
        IdentityTrustSettings(browser_confidence=0.8)
    with pytest.raises(ValueError, match="handraise_confidence must not exceed verified_confidence"):
        IdentityTrustSettings(handraise_confidence=0.9, verified_confidence=0.8)
    cfg = site_cfg(handraise_confidence=0.5)
    r = apply_identity_events(EMPTY, [form(T0, "demo-request", email="jane@acme.com")], SALT, cfg)
    assert resolve_visitor(r.snapshot, "v1", cfg).confidence == 0.5
