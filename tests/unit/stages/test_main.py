"""The worker's wiring (``pipeline.stages.main``): both stages switch model together."""

from __future__ import annotations

from pipeline.stages.main import BothStages, build_handlers

from .stage_fakes import make_settings


def test_a_model_switch_keeps_one_session_gap_for_both_stages() -> None:
    """The visitor stage's session gap and the account stage's bounce gap are one value per site, also
    after ``leadstream model promote`` switches the running worker's model."""
    settings = make_settings(sites=[{"site_id": "acme", "allowed_origins": ["*"]},
                                    {"site_id": "own", "allowed_origins": ["*"], "session_gap_minutes": 12}])
    visitor, account = build_handlers(settings)

    def gaps() -> dict[str, tuple[int, int]]:
        return {s: (visitor.session_cfg[s].gap_ms, account.rules[s].intent.session_gap_minutes * 60_000)
                for s in ("acme", "own")}

    assert gaps() == {"acme": (30 * 60_000,) * 2, "own": (12 * 60_000,) * 2}
    model = settings.load_scoring_model()
    promoted = model.model_copy(update={"intent": model.intent.model_copy(update={"session_gap_minutes": 45})})
    BothStages(visitor, account).use_model(promoted)
    assert gaps() == {"acme": (45 * 60_000,) * 2, "own": (12 * 60_000,) * 2}
