"""The versioned scoring model (a YAML file) and the per-site rules that override it.

A scoring model states everything that turns behaviour and firmographics into a lead:
intent signals (weights, URL patterns, daily caps, half-life), fit rules, thresholds,
tiers, cool-down, quota, the identity level required and the filters. Replays apply a
different model to history; every lead names the model ``version`` and ``digest``.

``SiteRules`` is what each site may override (ICP fit rules, thresholds, filters,
qualification): a field left unset uses the model's value; a field that is set
replaces the model's value as a whole. :func:`effective_rules` merges the two.

Every model is frozen and rejects unknown keys, so a typo fails at load with its path.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from importlib import resources
from typing import Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .model import Sector

__all__ = ["ScoringModelError", "Activity", "PageSignal", "Breadth", "IntentModel", "FitRule", "FitModel",
           "Thresholds", "Tiering", "Qualification", "Filters", "ScoringModel", "SiteRules", "EffectiveRules",
           "load_scoring_model", "default_scoring_model", "effective_rules", "with_site_digest"]


class ScoringModelError(ValueError):
    """The model file is invalid; the message names each bad key path."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Activity(_Frozen):
    """Points per occurrence and the most occurrences counted per UTC day (None: no cap)."""
    points: float
    daily_cap: int | None = Field(default=None, ge=0)


class PageSignal(_Frozen):
    """Points per page view matching any pattern (``pipeline.core.pages`` grammar)."""
    name: str = Field(min_length=1)
    patterns: tuple[str, ...] = Field(min_length=1)
    points: float
    daily_cap: int | None = Field(default=3, ge=0)


class Breadth(_Frozen):
    """Buying-group breadth: points for each distinct visitor beyond the first seen in
    the last ``window_days``, counting at most ``max_visitors`` visitors."""
    points_per_visitor: float = 8.0
    max_visitors: int = Field(default=5, ge=1)
    window_days: int = Field(default=30, ge=1)


class IntentModel(_Frozen):
    """Purchase intent. Raw points decay by half every ``half_life_days`` (per whole UTC
    day of age) and map to 0-100 as ``100 * (1 - exp(-raw / saturation_points))``."""
    half_life_days: float = Field(default=14.0, gt=0)
    window_days: int = Field(default=90, ge=1, description="Activity older than this is forgotten")
    saturation_points: float = Field(default=60.0, gt=0, description="raw points giving a score of 63")
    page_view: Activity = Activity(points=1, daily_cap=20)
    session: Activity = Activity(points=3, daily_cap=5)
    repeat_visit: Activity = Activity(points=2, daily_cap=3)
    active_day: float = 5.0
    engaged_minute: Activity = Activity(points=1, daily_cap=10)
    deep_scroll: Activity = Activity(points=2, daily_cap=5)
    deep_scroll_percent: int = Field(default=75, ge=1, le=100)
    conversion: Activity = Activity(points=50, daily_cap=2)
    bounce: Activity = Activity(points=-3, daily_cap=5)
    support_only: Activity = Activity(points=-5, daily_cap=3)
    support_patterns: tuple[str, ...] = ("/support*", "/help*", "*/kb/*", "support.*", "help.*")
    session_gap_minutes: int = Field(default=30, ge=1, description="A session counts as a bounce once this long idle")
    page_signals: tuple[PageSignal, ...] = ()
    breadth: Breadth = Breadth()
    max_sessions_kept: int = Field(default=200, ge=1)
    max_visitors_kept: int = Field(default=50, ge=1)

    @model_validator(mode="after")
    def _unique_signals(self) -> "IntentModel":
        names = [s.name for s in self.page_signals]
        if len(names) != len(set(names)):
            raise ValueError("page_signals: names must be unique")
        return self


FitAttribute = Literal["industry", "employees", "revenue", "country", "sector", "seniority", "department", "tag"]
_RANGE_ATTRS = frozenset({"employees", "revenue"})


class FitRule(_Frozen):
    """One ICP rule: ``values`` (case-insensitive list) for categorical attributes,
    ``min``/``max`` (inclusive) for employees and revenue. A negative weight penalises."""
    name: str = Field(min_length=1)
    attribute: FitAttribute
    values: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None
    weight: float

    @model_validator(mode="after")
    def _shape(self) -> "FitRule":
        if self.attribute in _RANGE_ATTRS:
            if self.min is None and self.max is None:
                raise ValueError(f"{self.attribute} rule {self.name!r} needs min and/or max")
            if self.min is not None and self.max is not None and self.min > self.max:
                raise ValueError(f"rule {self.name!r}: min > max")
        elif not self.values:
            raise ValueError(f"{self.attribute} rule {self.name!r} needs values")
        return self


class FitModel(_Frozen):
    """Fit = 100 x (sum of weights of matched rules) / (sum of positive weights), clamped 0-100."""
    rules: tuple[FitRule, ...] = ()


class Thresholds(_Frozen):
    fit_min: float = Field(default=50, ge=0, le=100)
    intent_min: float = Field(default=50, ge=0, le=100)
    identity_level: Literal["company", "person"] = "company"
    min_confidence: float = Field(default=0.6, ge=0, le=1)


class Tiering(_Frozen):
    """Tier = fit letter + intent digit (HubSpot grid): A >= fit_a, B >= fit_b, else C;
    1 >= intent_1, 2 >= intent_2, else 3. A1 is best, C3 worst."""
    fit_a: float = 80
    fit_b: float = 50
    intent_1: float = 70
    intent_2: float = 40


class Qualification(_Frozen):
    cooldown_days: float = Field(default=30, ge=0)
    monthly_quota: int | None = Field(default=None, ge=0, description="Leads per site per event-time month; None: no quota")
    tiers: Tiering = Tiering()


class Filters(_Frozen):
    """Lead filters (``pipeline.core.filters``). Country codes ISO alpha-2, upper-cased."""
    countries_allow: tuple[str, ...] = ()
    countries_deny: tuple[str, ...] = ()
    allow_unknown_country: bool = True
    pages_include: tuple[str, ...] = ()
    pages_exclude: tuple[str, ...] = ()
    exclude_sectors: tuple[Sector, ...] = (Sector.government, Sector.public_sector, Sector.education,
                                           Sector.military)
    exclude_unresolved: bool = True
    exclude_isp: bool = True
    exclude_bots: bool = True
    internal_cidrs: tuple[str, ...] = ()
    internal_domains: tuple[str, ...] = ()
    suppressed_domains: tuple[str, ...] = ()
    suppressed_email_hashes: tuple[str, ...] = ()

    @field_validator("countries_allow", "countries_deny")
    @classmethod
    def _countries(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        out = tuple(v.strip().upper() for v in value)
        bad = [v for v in out if len(v) != 2 or not v.isalpha()]
        if bad:
            raise ValueError(f"not ISO 3166-1 alpha-2 codes: {bad}")
        return out

    @field_validator("internal_cidrs")
    @classmethod
    def _cidrs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for v in value:
            ipaddress.ip_network(v, strict=False)  # raises ValueError with the value in it
        return value

    @field_validator("internal_domains", "suppressed_domains")
    @classmethod
    def _domains(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(v.strip().lower().removeprefix("www.") for v in value)


class ScoringModel(_Frozen):
    version: str = Field(min_length=1)
    description: str = ""
    intent: IntentModel = IntentModel()
    fit: FitModel = FitModel()
    thresholds: Thresholds = Thresholds()
    qualification: Qualification = Qualification()
    filters: Filters = Filters()

    @property
    def digest(self) -> str:
        """12 hex chars of sha256 over the canonical model: two files with one version
        but different content are told apart."""
        doc = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(doc.encode()).hexdigest()[:12]


class SiteRules(_Frozen):
    """Per-site overrides, embedded under each site in the settings file."""
    icp: FitModel | None = None
    thresholds: Thresholds | None = None
    qualification: Qualification | None = None
    filters: Filters | None = None


class EffectiveRules(_Frozen):
    """The model with a site's overrides applied: what the account stage uses."""
    model_version: str
    model_digest: str
    intent: IntentModel
    fit: FitModel
    thresholds: Thresholds
    qualification: Qualification
    filters: Filters


def effective_rules(model: ScoringModel, site: SiteRules | None = None) -> EffectiveRules:
    """Merge ``site`` over ``model`` (a set section replaces the model's section).

    ``model_digest`` names the rules in effect (see :func:`with_site_digest`)."""
    s = site or SiteRules()
    return with_site_digest(model, EffectiveRules(
        model_version=model.version, model_digest=model.digest, intent=model.intent,
        fit=s.icp or model.fit, thresholds=s.thresholds or model.thresholds,
        qualification=s.qualification or model.qualification, filters=s.filters or model.filters))


def with_site_digest(model: ScoringModel, rules: EffectiveRules) -> EffectiveRules:
    """``rules`` with the digest of what is in effect: the model's own digest when the site's
    overrides change nothing, else 12 hex chars of sha256 over the model's digest and the merged
    sections, so a change of a site's rules shows in the digest its scores and leads carry."""
    sections = rules.model_dump(mode="json", exclude={"model_version", "model_digest"})
    if sections == {k: getattr(model, k).model_dump(mode="json") for k in sections}:
        return rules
    doc = json.dumps({"model": model.digest, "effective": sections}, sort_keys=True, separators=(",", ":"))
    return rules.model_copy(update={"model_digest": hashlib.sha256(doc.encode()).hexdigest()[:12]})


def _format(exc: ValidationError) -> str:
    lines = ["invalid scoring model:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {loc}: {'unknown key' if err['type'] == 'extra_forbidden' else err['msg']}")
    return "\n".join(lines)


def load_scoring_model(source: str | Mapping[str, Any]) -> ScoringModel:
    """Parse and validate a model from YAML text or an already-loaded mapping.

    Raises :class:`ScoringModelError` naming each bad key path (no partial models).
    """
    data: Any = source
    if isinstance(source, str):
        try:
            data = yaml.safe_load(source)
        except yaml.YAMLError as exc:
            raise ScoringModelError(f"scoring model is not valid YAML: {exc}") from None
    if not isinstance(data, Mapping):
        raise ScoringModelError("scoring model: the top level must be a mapping")
    try:
        return ScoringModel.model_validate(dict(data))
    except ValidationError as exc:
        raise ScoringModelError(_format(exc)) from None


def default_scoring_model() -> ScoringModel:
    """The model shipped as ``pipeline/core/default_model.yaml`` (package data)."""
    text = resources.files("pipeline.core").joinpath("default_model.yaml").read_text(encoding="utf-8")
    return load_scoring_model(text)
