"""What a replay changed against the live run (``leadstream compare LIVE REPLAY``).

Both sides are read the same way: the latest ``LeadScore`` of every account (the compacted
``lead-scores``) and the latest ``QualifiedLead`` of every account (``qualified-leads``).
Accounts are compared within what the replay scored: an account the replay never saw lies
outside its time range, and is only counted (``live_only``), never reported as a lost lead.

Per site: leads gained (a lead in the replay, none live), leads lost (the reverse), tier
changes and score changes (fit or intent moved by at least ``min_delta`` points).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ..settings import Settings

Account = tuple[str, str]  # (site_id, account)


@dataclass(frozen=True)
class Side:
    """One run's outputs, latest value per (site, account)."""
    name: str
    scores: Mapping[Account, Mapping[str, Any]]
    leads: Mapping[Account, Mapping[str, Any]]

    @property
    def models(self) -> list[str]:
        seen = {f"{s.get('model_version')} ({s.get('model_digest')})" for s in self.scores.values()}
        return sorted(seen)


def latest_by_account(values: Iterable[Mapping[str, Any]]) -> dict[Account, Mapping[str, Any]]:
    """The last value of each (site, account) in topic order (what compaction keeps)."""
    out: dict[Account, Mapping[str, Any]] = {}
    for v in values:
        out[(str(v["site_id"]), str(v["account"]))] = v
    return out


@dataclass
class AccountChange:
    account: str
    company: str | None
    lead: str                  # gained | lost | kept | none
    live_tier: str | None
    replay_tier: str | None
    live_fit: float | None
    replay_fit: float | None
    live_intent: float | None
    replay_intent: float | None
    live_lead_tier: str | None = None
    replay_lead_tier: str | None = None

    @property
    def fit_delta(self) -> float | None:
        return None if self.live_fit is None or self.replay_fit is None else self.replay_fit - self.live_fit

    @property
    def intent_delta(self) -> float | None:
        if self.live_intent is None or self.replay_intent is None:
            return None
        return self.replay_intent - self.live_intent

    def as_dict(self) -> dict[str, Any]:
        fd, idelta = self.fit_delta, self.intent_delta
        return {"account": self.account, "company": self.company, "lead": self.lead,
                "live_tier": self.live_tier, "replay_tier": self.replay_tier,
                "live_lead_tier": self.live_lead_tier, "replay_lead_tier": self.replay_lead_tier,
                "live_fit": self.live_fit, "replay_fit": self.replay_fit, "fit_delta": _r(fd),
                "live_intent": self.live_intent, "replay_intent": self.replay_intent, "intent_delta": _r(idelta)}


@dataclass
class SiteComparison:
    site_id: str
    accounts: int = 0            # scored by the replay (and so compared)
    live_only: int = 0           # scored live, outside the replay's range
    replay_only: int = 0         # scored by the replay, never live
    live_leads: int = 0          # among the compared accounts
    replay_leads: int = 0
    gained: list[AccountChange] = field(default_factory=list)
    lost: list[AccountChange] = field(default_factory=list)
    tier_changes: list[AccountChange] = field(default_factory=list)
    score_changes: list[AccountChange] = field(default_factory=list)

    @property
    def changed(self) -> list[AccountChange]:
        """Every account with any change, once: lead gained or lost, tier or score moved."""
        seen: dict[str, AccountChange] = {}
        for c in (*self.gained, *self.lost, *self.tier_changes, *self.score_changes):
            seen.setdefault(c.account, c)
        return sorted(seen.values(), key=_importance)

    def as_dict(self) -> dict[str, Any]:
        return {"accounts": self.accounts, "live_only": self.live_only, "replay_only": self.replay_only,
                "live_leads": self.live_leads, "replay_leads": self.replay_leads,
                "gained": [c.as_dict() for c in self.gained], "lost": [c.as_dict() for c in self.lost],
                "tier_changes": [c.as_dict() for c in self.tier_changes],
                "score_changes": [c.as_dict() for c in self.score_changes]}


@dataclass
class Comparison:
    live: Side
    replay: Side
    sites: dict[str, SiteComparison]

    def as_dict(self) -> dict[str, Any]:
        totals = {k: sum(getattr(s, k) for s in self.sites.values())
                  for k in ("accounts", "live_only", "replay_only", "live_leads", "replay_leads")}
        totals.update({k: sum(len(getattr(s, k)) for s in self.sites.values())
                       for k in ("gained", "lost", "tier_changes", "score_changes")})
        return {"live": {"name": self.live.name, "models": self.live.models},
                "replay": {"name": self.replay.name, "models": self.replay.models},
                "totals": totals, "sites": {k: v.as_dict() for k, v in sorted(self.sites.items())}}


def compare(live: Side, replay: Side, min_delta: float = 0.5) -> Comparison:
    """Leads gained and lost, tier and score changes, per site (see module doc)."""
    sites: dict[str, SiteComparison] = {}

    def site(site_id: str) -> SiteComparison:
        return sites.setdefault(site_id, SiteComparison(site_id))

    for key in live.scores.keys() - replay.scores.keys():
        site(key[0]).live_only += 1
    for key in sorted(replay.scores):
        s = site(key[0])
        s.accounts += 1
        new = replay.scores[key]
        old = live.scores.get(key)
        if old is None:
            s.replay_only += 1
        live_lead, replay_lead = live.leads.get(key), replay.leads.get(key)
        s.live_leads += live_lead is not None
        s.replay_leads += replay_lead is not None
        lead = ("gained" if replay_lead and not live_lead else "lost" if live_lead and not replay_lead
                else "kept" if live_lead else "none")
        change = AccountChange(
            account=key[1], company=new.get("company_name") or new.get("company_domain"), lead=lead,
            live_tier=_get(old, "tier"), replay_tier=new.get("tier"), live_fit=_f(old, "fit"),
            replay_fit=_f(new, "fit"), live_intent=_f(old, "intent"), replay_intent=_f(new, "intent"),
            live_lead_tier=_get(live_lead, "tier"), replay_lead_tier=_get(replay_lead, "tier"))
        if lead == "gained":
            s.gained.append(change)
        elif lead == "lost":
            s.lost.append(change)
        if old is not None and old.get("tier") != new.get("tier"):
            s.tier_changes.append(change)
        if old is not None and (abs(change.fit_delta or 0) >= min_delta or abs(change.intent_delta or 0) >= min_delta):
            s.score_changes.append(change)
    return Comparison(live, replay, sites)


def _importance(c: AccountChange) -> tuple[int, float, str]:
    order = {"gained": 0, "lost": 1, "kept": 2, "none": 3}[c.lead]
    return order, -abs((c.fit_delta or 0) + (c.intent_delta or 0)), c.account


def _get(d: Mapping[str, Any] | None, key: str) -> Any:
    return None if d is None else d.get(key)


def _f(d: Mapping[str, Any] | None, key: str) -> float | None:
    value = _get(d, key)
    return None if value is None else round(float(value), 2)


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


# -- reading the topics --------------------------------------------------------------------------

def resolve(settings: Settings, name: str) -> tuple[str, str, str]:
    """``(label, lead-scores topic, qualified-leads topic)`` for ``live``, a live topic name, a
    replay's name or one of a replay's topics (``N.lead-scores`` / ``N.qualified-leads``)."""
    live = (settings.topics.lead_scores, settings.topics.qualified_leads)
    if name in ("live", *live):
        return "live", *live
    for suffix in (".lead-scores", ".qualified-leads"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name, f"{name}.lead-scores", f"{name}.qualified-leads"


def read_side(settings: Settings, name: str) -> Side:
    """One side of a comparison from the broker (see :func:`resolve`)."""
    label, scores_topic, leads_topic = resolve(settings, name)
    return Side(label, latest_by_account(read_values(settings, scores_topic)),
                latest_by_account(read_values(settings, leads_topic)))


def read_values(settings: Settings, topic: str) -> list[dict[str, Any]]:
    """Every decoded value of ``topic`` up to its end offsets now, partition by partition (no group)."""
    from kafka import KafkaConsumer, TopicPartition

    from ..codec import make_codec

    codec = make_codec(settings.kafka.schema_registry_url)
    consumer = KafkaConsumer(**settings.kafka.client_options(), enable_auto_commit=False, group_id=None)
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise KeyError(f"topic {topic} does not exist")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        out: list[dict[str, Any]] = []
        remaining = {tp for tp in tps if ends[tp] > consumer.position(tp)}
        while remaining:
            for tp, records in consumer.poll(timeout_ms=1000).items():
                out.extend(codec.decode(r.value) for r in records if r.value is not None and r.offset < ends[tp])
            remaining = {tp for tp in remaining if consumer.position(tp) < ends[tp]}
        return out
    finally:
        consumer.close()


# -- showing it --------------------------------------------------------------------------------------

def render(comparison: Comparison, limit: int = 50) -> Any:
    """A rich renderable: per site, a summary and the changed accounts (most important first)."""
    from rich.console import Group
    from rich.table import Table

    parts: list[Any] = []
    head = Table(title="compare", show_header=True, header_style="bold")
    head.add_column("")
    head.add_column(f"live: {comparison.live.name}")
    head.add_column(f"replay: {comparison.replay.name}")
    head.add_row("models", "\n".join(comparison.live.models) or "-", "\n".join(comparison.replay.models) or "-")
    parts.append(head)
    if not any(s.accounts for s in comparison.sites.values()):
        parts.append("the replay scored no accounts: nothing to compare")
    for site_id, s in sorted(comparison.sites.items()):
        summary = Table(title=f"site {site_id}", show_header=True, header_style="bold")
        for col in ("accounts", "leads live", "leads replay", "gained", "lost", "tier changes", "score changes",
                    "outside the replay"):
            summary.add_column(col, justify="right")
        summary.add_row(str(s.accounts), str(s.live_leads), str(s.replay_leads), f"[green]+{len(s.gained)}[/]",
                        f"[red]-{len(s.lost)}[/]", str(len(s.tier_changes)), str(len(s.score_changes)),
                        str(s.live_only))
        parts.append(summary)
        changed = s.changed
        if not changed:
            continue
        detail = Table(show_header=True, header_style="bold", title=f"site {site_id}: changed accounts")
        for col, justify in (("lead", "left"), ("account", "left"), ("company", "left"), ("tier", "left"),
                             ("fit", "right"), ("Δ fit", "right"), ("intent", "right"), ("Δ intent", "right")):
            detail.add_column(col, justify=justify)  # type: ignore[arg-type]
        style = {"gained": "[green]gained[/]", "lost": "[red]lost[/]", "kept": "kept", "none": ""}
        for c in changed[:limit]:
            detail.add_row(style[c.lead], c.account, c.company or "", f"{c.live_tier or '-'} → {c.replay_tier or '-'}",
                           _num(c.replay_fit), _delta(c.fit_delta), _num(c.replay_intent), _delta(c.intent_delta))
        if len(changed) > limit:
            detail.add_row("", f"... and {len(changed) - limit} more (--limit, --json)", "", "", "", "", "", "")
        parts.append(detail)
    return Group(*parts)


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _delta(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) < 0.05:
        return "0"
    return f"[green]+{v:.1f}[/]" if v > 0 else f"[red]{v:.1f}[/]"
