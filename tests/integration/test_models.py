"""The active scoring model in Redis: promote, rollback, history, and a stage that follows it."""

from __future__ import annotations

import pytest
import redis

from pipeline.codec import SingleObjectCodec
from pipeline.core.scoring_model import ScoringModelError, default_scoring_model, load_scoring_model
from pipeline.ops.models import ModelFollower, ModelRegistry, ModelRegistryError
from pipeline.settings import Settings
from pipeline.stages.account import AccountStage, AccountTopics

pytestmark = pytest.mark.integration

BASE = "version: base-1\n"
NEXT = "version: next-2\nthresholds: {fit_min: 70}\n"
THIRD = "version: third-3\nintent: {half_life_days: 7}\n"


def test_promote_rollback_and_history(redis_client: redis.Redis) -> None:
    registry = ModelRegistry(redis_client)
    assert registry.active() is None and registry.history() == []
    first = registry.promote(NEXT, by="ana@host", baseline=BASE)
    assert (first.action, first.version, first.previous_version) == ("promote", "next-2", "base-1")
    assert registry.active().version == "next-2"  # type: ignore[union-attr]
    assert registry.active_model() == load_scoring_model(NEXT)
    with pytest.raises(ModelRegistryError, match="already active"):
        registry.promote(NEXT, baseline=BASE)
    with pytest.raises(ScoringModelError):
        registry.promote("version: x\nintnet: {}\n")
    registry.promote(THIRD, by="ben@host", baseline=BASE)  # the baseline is recorded once only
    back = registry.rollback(by="cy@host")
    assert (back.action, back.version, back.previous_version) == ("rollback", "next-2", "third-3")
    assert registry.rollback().version == "base-1"
    with pytest.raises(ModelRegistryError, match="nothing to roll back to"):
        registry.rollback()
    history = registry.history()
    assert [(h.action, h.version) for h in history] == [
        ("rollback", "base-1"), ("rollback", "next-2"), ("promote", "third-3"), ("promote", "next-2"),
        ("baseline", "base-1")]
    assert history[2].by == "ben@host" and history[2].digest == load_scoring_model(THIRD).digest
    assert all(h.at > 0 for h in history) and history[-1].previous_digest is None
    assert [h.by for h in history[3:]] == ["ana@host", "ana@host"]
    # every key shares one hash tag (one Redis Cluster slot, so the script may touch them together)
    assert {k.decode().split("}")[0] for k in redis_client.keys("ls:{model}*")} == {"ls:{model"}


def test_a_stage_follows_the_active_model(redis_client: redis.Redis) -> None:
    settings = Settings(sites=[{"site_id": "plain"}, {"site_id": "strict", "rules": {"thresholds": {"fit_min": 90}}}])
    default = default_scoring_model()
    stage = AccountStage(settings, SingleObjectCodec(), AccountTopics("s", 1, "q", 1, "b"), default, None)
    registry = ModelRegistry(redis_client)
    follower = ModelFollower(registry, stage, default)
    assert not follower.check()  # nothing promoted: the configured model stays
    from importlib import resources
    default_text = resources.files("pipeline.core").joinpath("default_model.yaml").read_text()
    registry.promote(NEXT, baseline=default_text)
    assert follower.check() and not follower.check()
    assert {r.model_version for r in stage.rules.values()} == {"next-2"}
    assert stage.default_rules.model_version == "next-2"
    assert stage.rules["plain"].thresholds.fit_min == 70                      # the model's section
    assert stage.rules["strict"].thresholds.fit_min == 90                     # the site's override wins
    assert stage.rules["plain"].model_digest == load_scoring_model(NEXT).digest
    assert stage.rules["strict"].model_digest != stage.rules["plain"].model_digest
    registry.rollback()
    assert follower.check() and stage.rules["plain"].model_version == default.version
    assert stage.rules["plain"].model_digest == default.digest and follower.switches == 2
    # a stored model that no longer loads is logged and skipped; scoring goes on with the one in use
    registry.promote(THIRD)
    redis_client.set(f"ls:{{model}}:yaml:{load_scoring_model(THIRD).digest}", "version: [broken")
    before = stage.rules
    assert not follower.check() and not follower.check()
    assert stage.rules is before and follower.switches == 2
