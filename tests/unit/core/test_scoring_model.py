from __future__ import annotations

import pytest

from pipeline.core.scoring_model import (ScoringModelError, SiteRules, Thresholds, default_scoring_model,
                                         effective_rules, load_scoring_model)


def test_default_model_loads() -> None:
    m = default_scoring_model()
    assert m.version and {s.name for s in m.intent.page_signals} >= {"pricing", "demo", "contact", "careers"}
    assert [r.attribute for r in m.fit.rules if r.name == "target_country"] == ["country"]
    assert "NO" in next(r for r in m.fit.rules if r.name == "target_country").values


def test_minimal_yaml_and_dict() -> None:
    m = load_scoring_model("version: v2\nintent: {half_life_days: 7}\n")
    assert m.intent.half_life_days == 7 and m.thresholds.fit_min == 50
    assert load_scoring_model({"version": "v2", "intent": {"half_life_days": 7}}) == m


@pytest.mark.parametrize("text, where", [
    ("version: v1\nintnet: {}\n", "intnet: unknown key"),
    ("version: ''\n", "version"),
    ("version: v1\nintent: {half_life_days: 0}\n", "intent.half_life_days"),
    ("version: v1\nthresholds: {identity_level: household}\n", "thresholds.identity_level"),
    ("version: v1\nfilters: {countries_allow: [England]}\n", "filters.countries_allow"),
    ("- a\n- b\n", "top level must be a mapping"),
    ("version: [unclosed\n", "not valid YAML"),
    ("version: v1\nintent: {page_signals: [{name: a, patterns: [/x], points: 1}, {name: a, patterns: [/y], points: 1}]}\n",
     "names must be unique"),
])
def test_errors_name_the_path(text: str, where: str) -> None:
    with pytest.raises(ScoringModelError) as exc:
        load_scoring_model(text)
    assert where in str(exc.value)


def test_frozen() -> None:
    m = default_scoring_model()
    with pytest.raises(Exception):
        m.version = "x"  # type: ignore[misc]


def test_digest_tracks_content() -> None:
    a = load_scoring_model({"version": "v1"})
    b = load_scoring_model({"version": "v1", "thresholds": {"fit_min": 70}})
    assert a.digest != b.digest and a.digest == load_scoring_model({"version": "v1"}).digest


def test_site_rules_override_by_section() -> None:
    m = default_scoring_model()
    site = SiteRules(thresholds=Thresholds(fit_min=80, identity_level="person"))
    r = effective_rules(m, site)
    assert r.thresholds.fit_min == 80 and r.thresholds.intent_min == 50  # section replaced, defaults within it
    assert r.fit == m.fit and r.filters == m.filters and r.model_version == m.version
    assert effective_rules(m).thresholds == m.thresholds
    with pytest.raises(Exception):
        SiteRules.model_validate({"icp": {"rules": []}, "typo": 1})


def test_site_overrides_are_part_of_the_digest() -> None:
    """A lead names the rules that produced it: a site's overrides change its digest, the same
    overrides give the same digest, and a site without overrides has the model's own digest."""
    m = default_scoring_model()
    strict = SiteRules(thresholds=Thresholds(fit_min=80))
    stricter = SiteRules(thresholds=Thresholds(fit_min=90))
    assert effective_rules(m).model_digest == m.digest
    assert effective_rules(m, SiteRules()).model_digest == m.digest
    assert effective_rules(m, strict).model_digest != m.digest
    assert effective_rules(m, strict).model_digest != effective_rules(m, stricter).model_digest
    assert effective_rules(m, strict).model_digest == effective_rules(m, SiteRules(thresholds=Thresholds(fit_min=80))).model_digest
    assert len(effective_rules(m, strict).model_digest) == len(m.digest)
    other = load_scoring_model({"version": m.version, "intent": {"half_life_days": 3}})
    assert effective_rules(other, strict).model_digest != effective_rules(m, strict).model_digest


def test_an_override_equal_to_the_model_keeps_the_models_digest() -> None:
    m = default_scoring_model()
    assert effective_rules(m, SiteRules(thresholds=m.thresholds)).model_digest == m.digest
