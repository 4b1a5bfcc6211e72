"""ICP fit (0-100) from firmographics and person attributes; fit does not decay.

``fit = 100 * (sum of weights of matched rules) / (sum of positive weights)``, clamped
to 0-100. A rule whose attribute is unknown contributes nothing (and says so): missing
data never counts as a match. Categorical rules compare case-insensitively; range rules
(employees, revenue) are inclusive at both ends.
"""

from __future__ import annotations

from dataclasses import dataclass

from .intent import Contribution
from .model import Company
from .scoring_model import FitModel, FitRule

__all__ = ["FitScore", "score_fit"]


@dataclass(frozen=True, slots=True)
class FitScore:
    score: float
    contributions: tuple[Contribution, ...]


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
    if total <= 0:
        return FitScore(0.0, ())
    out: list[Contribution] = []
    matched = 0.0
    for rule in model.rules:
        value = _value(rule, company, seniority, department)
        if value is None:
            out.append(Contribution(rule.name, 0.0, 0, f"{rule.attribute} unknown"))
            continue
        shown = ",".join(value) if isinstance(value, tuple) else str(value)
        if _matches(rule, value):
            matched += rule.weight
            out.append(Contribution(rule.name, round(100.0 * rule.weight / total, 4), 1,
                                    f"{rule.attribute} {shown} matches"))
        else:
            out.append(Contribution(rule.name, 0.0, 0, f"{rule.attribute} {shown} does not match"))
    return FitScore(round(min(max(100.0 * matched / total, 0.0), 100.0), 1), tuple(out))
