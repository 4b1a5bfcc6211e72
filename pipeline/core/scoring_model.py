"""The versioned scoring model (a YAML file) and the per-site rules that override it.

A scoring model states everything that turns behaviour and firmographics into a lead:
intent signals (weights, URL patterns, daily caps, half-life), fit rules, thresholds,
tiers, cool-down, quota, the identity level required and the filters. Replays apply a
different model to history; every lead names the model ``version`` and ``digest``.

``SiteRules`` is what each site may override (ICP fit rules, intent, thresholds,
filters, qualification). :func:`effective_rules` merges a site's sections **key by
key** over the model's: a key the site leaves out keeps the model's value (a site
that sets ``filters: {countries_allow: [DE]}`` keeps the model's careers page
exclusion); nested mappings (``qualification.tiers``) merge the same way; a list
replaces the model's list, except ``intent.page_signals``, merged by ``name`` (a
site's signal replaces the model's signal of that name, new names are added).

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

__all__ = ["ScoringModelError", "Activity", "PageSignal", "Breadth", "BuyingStage", "ActionRule", "IntentModel",
           "FitRule", "FitModel",
           "Thresholds", "Tiering", "Qualification", "Filters", "ScoringModel", "SiteRules", "EffectiveRules",
           "load_scoring_model", "default_scoring_model", "effective_rules", "merge_section",
           "with_site_digest"]


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


class BuyingStage(_Frozen):
    """Buying-stage behaviour (formula in ``pipeline.core.intent``): at least ``min_hits``
    hits of the buying ``signals`` (page-signal names) on 2+ distinct UTC days or from 2+
    distinct visitors within ``window_days``. Until then the positive page-signal points
    count at most ``unstaged_cap`` raw points; once there, ``points_per_day`` /
    ``points_per_person`` are added for each distinct day / visitor beyond the first (at
    most ``max_days`` / ``max_people``). ``ambient_cap`` caps the raw points of everything
    that is not a buying signal (page views, sessions, repeat visits, active days, engaged
    minutes, deep scrolls, unclassified actions, breadth), so support-, docs- or
    careers-only reading and single bounces stay far below a useful intent."""
    signals: tuple[str, ...] = ("pricing", "demo", "contact")
    min_hits: int = Field(default=3, ge=1)
    unstaged_cap: float | None = Field(default=20.0, ge=0, description="None: no cap")
    points_per_day: float = Field(default=10.0, ge=0)
    max_days: int = Field(default=3, ge=1)
    points_per_person: float = Field(default=10.0, ge=0)
    max_people: int = Field(default=3, ge=1)
    window_days: int = Field(default=30, ge=1)
    ambient_cap: float | None = Field(default=20.0, ge=0, description="None: no cap")


class ActionRule(_Frozen):
    """One class of form submits and custom events (``pipeline.core.actions``): by form id
    (``forms``), event name (``events``; the structured event's action counts too) or the
    page it happened on (``pages``, ``pipeline.core.pages`` grammar). Form ids and event
    names are case-insensitive shell-style patterns (``*demo*``)."""
    name: str = Field(min_length=1)
    forms: tuple[str, ...] = ()
    events: tuple[str, ...] = ()
    pages: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _some(self) -> "ActionRule":
        if not (self.forms or self.events or self.pages):
            raise ValueError(f"action rule {self.name!r} needs forms, events or pages")
        return self


#: Form submits and custom events that are conversions, and that are not, when a model does
#: not list its own (``default_model.yaml`` lists the same; a test keeps them equal).
DEFAULT_CONVERSIONS: tuple[ActionRule, ...] = (
    ActionRule(name="demo",
               forms=("*demo*",),
               events=("*demo*",),
               pages=("/demo*", "/book-a-demo*", "/request-demo*")),
    ActionRule(name="contact",
               forms=("*contact*", "*sales*", "*quote*"),
               events=("*contact*", "*sales*", "*quote*"),
               pages=("/contact*", "/talk-to-sales*", "/sales*")),
    ActionRule(name="trial",
               forms=("*trial*", "*signup*", "*sign-up*", "*sign_up*"),
               events=("*trial*", "*signup*", "*sign_up*", "*sign-up*"),
               pages=("/trial*", "/signup*", "/sign-up*")),
)
DEFAULT_NON_CONVERSIONS: tuple[ActionRule, ...] = (
    ActionRule(name="support",
               forms=("*support*", "*ticket*", "*help*", "*bug*"),
               events=("*support*", "*ticket*"),
               pages=("/support*", "/help*", "*/kb/*", "support.*", "help.*", "/status*", "/docs*")),
    ActionRule(name="careers",
               forms=("*career*", "*job*", "*apply*", "*application*", "*candidate*", "*resume*"),
               events=("*career*", "*job*", "*apply*", "*application*"),
               pages=("/careers*", "/jobs*", "*/careers/*", "jobs.*")),
    ActionRule(name="downloads",
               forms=("*download*", "*whitepaper*", "*ebook*", "*report*", "*gated*", "*webinar*"),
               events=("*download*", "*whitepaper*", "*ebook*", "*webinar*"),
               pages=("/resources*", "/downloads*", "/whitepaper*", "/ebook*", "/reports*", "/webinar*")),
    ActionRule(name="newsletter",
               forms=("*newsletter*", "*subscribe*"),
               events=("*newsletter*", "*subscribe*")),
    ActionRule(name="login",
               forms=("*login*", "*log-in*", "*signin*", "*sign-in*"),
               events=("*login*", "*sign_in*", "*signin*"),
               pages=("/login*", "/signin*", "app.*")),
)


class IntentModel(_Frozen):
    """Purchase intent. Raw points decay by half every ``half_life_days`` (per whole UTC
    day of age) and map to 0-100 as ``100 * (1 - exp(-raw / saturation_points))``.

    Form submits and custom events are classified by ``conversions`` and
    ``non_conversions`` (``pipeline.core.actions``): only a conversion scores
    ``conversion`` points; a non-conversion scores ``non_conversion``; any other scores
    ``other_action``."""
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
    non_conversion: Activity = Activity(points=0, daily_cap=2)
    other_action: Activity = Activity(points=3, daily_cap=2)
    conversions: tuple[ActionRule, ...] = DEFAULT_CONVERSIONS
    non_conversions: tuple[ActionRule, ...] = DEFAULT_NON_CONVERSIONS
    buying_stage: BuyingStage = BuyingStage()
    bounce: Activity = Activity(points=-3, daily_cap=5)
    support_only: Activity = Activity(points=-5, daily_cap=3)
    support_patterns: tuple[str, ...] = ("/support*", "/help*", "*/kb/*", "support.*", "help.*")
    session_gap_minutes: int = Field(default=30, ge=1, description="Inactivity that ends a session (event time); a "
                                     "one-page session counts as a bounce once this long idle. A site's "
                                     "session_gap_minutes overrides it")
    page_signals: tuple[PageSignal, ...] = ()
    breadth: Breadth = Breadth()
    max_sessions_kept: int = Field(default=200, ge=1)
    max_visitors_kept: int = Field(default=50, ge=1)

    @model_validator(mode="after")
    def _unique_signals(self) -> "IntentModel":
        for key in ("page_signals", "conversions", "non_conversions"):
            names = [s.name for s in getattr(self, key)]
            if len(names) != len(set(names)):
                raise ValueError(f"{key}: names must be unique")
        return self


FitAttribute = Literal["industry", "employees", "revenue", "country", "sector", "seniority", "department", "tag"]
_RANGE_ATTRS = frozenset({"employees", "revenue"})


class FitRule(_Frozen):
    """One ICP rule: ``values`` (case-insensitive list) for categorical attributes,
    ``min``/``max`` (inclusive) for employees and revenue. A negative weight penalises.

    ``required: true``: a company that does not match (or whose value is unknown) is
    not a lead at any score. Unset (``null``): required when the rule's attribute is in
    the model's ``fit.required_attributes`` and its weight is positive."""
    name: str = Field(min_length=1)
    attribute: FitAttribute
    values: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None
    weight: float
    required: bool | None = None

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
    """Fit = 100 x (sum of weights of matched rules) / (sum of positive weights), clamped 0-100.

    ``required_attributes``: rules on these attributes are requirements unless a rule
    says ``required: false`` (what a user listing "software, 50-1000 employees, in DE"
    expects: a retailer in DE is not a lead however well it matches the rest)."""
    rules: tuple[FitRule, ...] = ()
    required_attributes: tuple[FitAttribute, ...] = ("industry", "employees", "country")

    def is_required(self, rule: FitRule) -> bool:
        if rule.required is not None:
            return rule.required
        return rule.weight > 0 and rule.attribute in self.required_attributes


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
    """``cooldown_days``: one lead per account (or person) per cool-down; a tier rise inside
    it updates that lead (same id, next ``version``). ``customer_tags``: a company carrying
    one of these tags (``import companies`` with ``customer: true`` adds ``customer``) is an
    existing customer: never a new lead, an ``expansion`` signal instead."""
    cooldown_days: float = Field(default=30, ge=0)
    customer_tags: tuple[str, ...] = ("customer",)
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


_SECTIONS: dict[str, type[_Frozen]] = {}   # SiteRules field -> section model (filled below)
_NAMED_LISTS = frozenset({"page_signals"})  # lists merged by item ``name``


def _plain(value: Any) -> Any:
    """A section value as plain data: a model gives only the keys that were set."""
    if isinstance(value, BaseModel):
        return {k: _plain(getattr(value, k)) for k in value.model_fields_set}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def merge_section(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged key by key onto ``base`` (both plain data): mappings recurse, lists
    replace, except the named lists (``page_signals``) merged by ``name``."""
    out = dict(base)
    for key, value in over.items():
        old = out.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            out[key] = merge_section(old, value)
        elif key in _NAMED_LISTS and isinstance(value, (list, tuple)) and isinstance(old, (list, tuple)):
            items = [dict(i) for i in old]
            index = {i.get("name"): n for n, i in enumerate(items)}
            for item in value:
                item = dict(item)
                if item.get("name") in index:
                    items[index[item["name"]]] = item
                else:
                    items.append(item)
            out[key] = items
        else:
            out[key] = value
    return out


class SiteRules(_Frozen):
    """Per-site overrides, embedded under each site in the settings file (``rules:``).

    Each section holds only the keys the site sets (a model instance passed in code
    contributes the fields it was built with); :func:`effective_rules` merges them key
    by key over the model. Validated at load: a typo or bad value fails with its path.
    """
    icp: dict[str, Any] | None = None
    intent: dict[str, Any] | None = None
    thresholds: dict[str, Any] | None = None
    qualification: dict[str, Any] | None = None
    filters: dict[str, Any] | None = None

    @field_validator("icp", "intent", "thresholds", "qualification", "filters", mode="before")
    @classmethod
    def _partial(cls, value: Any) -> Any:
        return None if value is None else _plain(value)

    @model_validator(mode="after")
    def _valid_over_defaults(self) -> "SiteRules":
        errors: list[str] = []
        for name, section in _SECTIONS.items():
            over = getattr(self, name)
            if over is None:
                continue
            try:
                section.model_validate(merge_section(section().model_dump(), over))
            except ValidationError as exc:
                for err in exc.errors():
                    loc = ".".join(str(p) for p in (name, *err["loc"]))
                    errors.append(f"{loc}: {'unknown key' if err['type'] == 'extra_forbidden' else err['msg']}")
        if errors:
            raise ValueError("; ".join(errors))
        return self


class EffectiveRules(_Frozen):
    """The model with a site's overrides applied: what the account stage uses."""
    model_version: str
    model_digest: str
    intent: IntentModel
    fit: FitModel
    thresholds: Thresholds
    qualification: Qualification
    filters: Filters


def effective_rules(model: ScoringModel, site: SiteRules | None = None,
                    conversion_names: tuple[str, ...] | list[str] = (),
                    session_gap_minutes: int | None = None) -> EffectiveRules:
    """Merge ``site`` over ``model`` key by key (see the module doc).

    ``conversion_names`` (the site setting of that name, kept working) adds a conversion
    rule ``conversion_names`` matching those event names, ahead of the others.
    ``session_gap_minutes`` (the site setting of that name) is the gap in effect: the one that
    ends a visitor's session is the one after which a one-page session is a bounce."""
    s = site or SiteRules()

    def merged(section: _Frozen, over: dict[str, Any] | None) -> dict[str, Any]:
        return merge_section(section.model_dump(), over or {})

    intent = merged(model.intent, s.intent)
    if session_gap_minutes is not None:
        intent["session_gap_minutes"] = session_gap_minutes
    if conversion_names:
        intent["conversions"] = [{"name": "conversion_names", "events": list(conversion_names)},
                                 *[c for c in intent.get("conversions", ()) if c.get("name") != "conversion_names"]]
    return with_site_digest(model, EffectiveRules(
        model_version=model.version, model_digest=model.digest, intent=IntentModel.model_validate(intent),
        fit=FitModel.model_validate(merged(model.fit, s.icp)),
        thresholds=Thresholds.model_validate(merged(model.thresholds, s.thresholds)),
        qualification=Qualification.model_validate(merged(model.qualification, s.qualification)),
        filters=Filters.model_validate(merged(model.filters, s.filters))))


_SECTIONS.update({"icp": FitModel, "intent": IntentModel, "thresholds": Thresholds,
                  "qualification": Qualification, "filters": Filters})


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
