"""ICP fit (0-100) from firmographics and person attributes; fit does not decay.

``fit = 100 * (sum of weights of matched rules) / (sum of positive weights)``, clamped
to 0-100. A rule whose attribute is unknown contributes nothing (and says so): missing
data never counts as a match. Categorical rules compare case-insensitively; range rules
(employees, revenue) are inclusive at both ends.

**Requirements.** A rule that is required (``required: true``, or by default a rule on
one of the model's ``required_attributes``: industry, employees, country) must match:
a company that fails it, or whose value is unknown, is not a lead at any score.
``FitScore.unmet`` names each failed requirement (``rule: why``); its contribution's
detail starts with ``required:``. The score itself is unchanged by requirements.
"""

from __future__ import annotations

from dataclasses import dataclass

from .intent import Contribution
from .model import Company
from .scoring_model import FitModel, FitRule

__all__ = ["FitScore", "score_fit", "describe_icp"]


@dataclass(frozen=True, slots=True)
class FitScore:
    score: float
    contributions: tuple[Contribution, ...]
    unmet: tuple[str, ...] = ()      # failed requirements: "rule: why"


def _value(rule: FitRule, company: Company | None, seniority: str | None,
           department: str | None) -> str | float | tuple[str, ...] | None:
    a = rule.attribute
    if a == "seniority":
        return seniority
    if a == "department":
        return department
    if company is None:
        return None
    if a == "industry":
        return company.industry
    if a == "employees":
        return company.employees
    if a == "revenue":
        return company.revenue
    if a == "country":
        return company.country
    if a == "sector":
        return company.sector.value
    return company.tags or None   # tag


def _matches(rule: FitRule, value: str | float | tuple[str, ...]) -> bool:
    if isinstance(value, (int, float)):
        return (rule.min is None or value >= rule.min) and (rule.max is None or value <= rule.max)
    wanted = {v.strip().lower() for v in rule.values}
    if isinstance(value, tuple):
        return any(v.strip().lower() in wanted for v in value)
    return value.strip().lower() in wanted


def score_fit(company: Company | None, model: FitModel, *, seniority: str | None = None,
              department: str | None = None) -> FitScore:
    """Score ``company`` (and the best person's seniority / department) against the ICP
    rules; every rule appears in ``contributions`` with its points and why."""
    total = sum(r.weight for r in model.rules if r.weight > 0)
    out: list[Contribution] = []
    unmet: list[str] = []
    matched = 0.0
    for rule in model.rules:
        required = model.is_required(rule)
        tag = "required: " if required else ""
        value = _value(rule, company, seniority, department)
        if value is None:
            detail = f"{tag}{rule.attribute} unknown"
            out.append(Contribution(rule.name, 0.0, 0, detail))
        else:
            shown = ",".join(value) if isinstance(value, tuple) else str(value)
            if _matches(rule, value):
                matched += rule.weight
                points = round(100.0 * rule.weight / total, 4) if total > 0 else 0.0
                out.append(Contribution(rule.name, points, 1, f"{tag}{rule.attribute} {shown} matches"))
                continue
            detail = f"{tag}{rule.attribute} {shown} does not match"
            out.append(Contribution(rule.name, 0.0, 0, detail))
        if required:
            unmet.append(f"{rule.name}: {detail.removeprefix(tag)}")
    score = round(min(max(100.0 * matched / total, 0.0), 100.0), 1) if total > 0 else 0.0
    return FitScore(score, tuple(out), tuple(unmet))


def _or(values: tuple[str, ...]) -> str:
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " or " + values[-1]


def _number(v: float) -> str:
    return f"{v:,.0f}" if v == int(v) else f"{v:,}"


def _range(rule: FitRule, unit: str) -> str:
    if rule.min is not None and rule.max is not None:
        return f"{_number(rule.min)}-{_number(rule.max)} {unit}"
    if rule.min is not None:
        return f"at least {_number(rule.min)} {unit}"
    return f"at most {_number(rule.max or 0)} {unit}"


def describe_icp(model: FitModel) -> str:
    """The ICP in plain words, e.g. ``Companies in software or fintech, 50-1000 employees,
    in DE, FR, NL; people: vp or director; required: industry, employees``."""
    company: list[str] = []
    people: list[str] = []
    avoid: list[str] = []
    industries = ""
    for r in model.rules:
        if r.weight < 0:
            avoid.append(f"{r.attribute} {_or(r.values)}" if r.values else _range(r, r.attribute))
        elif r.attribute == "industry":
            industries = f" in {_or(r.values)}"
        elif r.attribute == "employees":
            company.append(_range(r, "employees").replace(",", ""))
        elif r.attribute == "revenue":
            company.append(_range(r, "USD revenue"))
        elif r.attribute == "country":
            company.append("in " + ", ".join(r.values))
        elif r.attribute == "sector":
            company.append(f"{_or(r.values)} sector")
        elif r.attribute == "tag":
            company.append(f"tagged {_or(r.values)}")
        elif r.attribute == "seniority":
            people.append(_or(r.values))
        else:
            people.append(f"in {_or(r.values)}")
    if not model.rules:
        return "No ICP rules: every company fits 0"
    text = f"Companies{industries}" + "".join(f", {c}" for c in company)
    if people:
        text += "; people: " + ", ".join(people)
    if avoid:
        text += "; not: " + ", ".join(avoid)
    required = list(dict.fromkeys(r.attribute for r in model.rules if model.is_required(r)))
    text += "; required: " + (", ".join(required) if required else "none (weights only)")
    return text
