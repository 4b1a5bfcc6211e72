"""The active scoring model in Redis: promote, roll back, and workers that follow it without a restart.

``leadstream model promote FILE`` stores the model's YAML under its digest, makes it the
active model and records the switch (the first promotion records the workers' configured
model first, as the ``baseline``); ``leadstream model rollback`` makes the model that was
active before the last promotion active again. Every worker polls the active model's digest
every ``stages.model_poll_s`` seconds and, when it changed, rebuilds the account stage's rules
from the stored YAML (:meth:`AccountStage.use_model`). Leads and lead scores name the model
``version`` and ``digest`` that produced them.

Key layout (one hash tag, so a Redis Cluster keeps them in one slot and the scripts may
touch them together)::

    ls:{model}:active          hash    version, digest, at (epoch ms), by: the active model
    ls:{model}:yaml:<digest>   string  the model file's text, as promoted
    ls:{model}:stack           list    digests, newest first: promote pushes, rollback pops
    ls:{model}:history         stream  every switch: action, version, digest, previous_version,
                                       previous_digest, at, by (user@host)

With no active model in Redis, workers use ``scoring_model`` (or the built-in model).
A replay (``leadstream replay --model``) never follows the active model.
"""

from __future__ import annotations

import getpass
import logging
import socket
import time
from dataclasses import dataclass
from typing import Any, Protocol

from ..redis_client import sync_client
from ..core.scoring_model import ScoringModel, load_scoring_model
from ..settings import Settings

log = logging.getLogger(__name__)

PREFIX = "ls:{model}"
ACTIVE = f"{PREFIX}:active"
STACK = f"{PREFIX}:stack"
HISTORY = f"{PREFIX}:history"


def yaml_key(digest: str) -> str:
    return f"{PREFIX}:yaml:{digest}"


class ModelRegistryError(Exception):
    """A promote or rollback that cannot be done; the message says why."""


@dataclass(frozen=True)
class ModelSwitch:
    """One entry of the history: what became active, when, by whom, and what it replaced."""
    id: str
    action: str
    version: str
    digest: str
    previous_version: str | None
    previous_digest: str | None
    at: int
    by: str

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "action": self.action, "version": self.version, "digest": self.digest,
                "previous_version": self.previous_version, "previous_digest": self.previous_digest,
                "at": self.at, "by": self.by}


@dataclass(frozen=True)
class ActiveModel:
    version: str
    digest: str
    at: int
    by: str


def who() -> str:
    """``user@host`` of this process, for the history."""
    try:
        user = getpass.getuser()
    except Exception:  # no login name in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


# Make ARGV[1] (digest) active: KEYS active, stack, history, yaml; ARGV digest, version, at, by, yaml, action.
# promote and baseline push the digest; rollback pops the current one first (its caller checked the stack).
_SWITCH = """
local prev_version = redis.call('HGET', KEYS[1], 'version')
local prev_digest = redis.call('HGET', KEYS[1], 'digest')
if ARGV[6] == 'rollback' then
  redis.call('LPOP', KEYS[2])
  if redis.call('LINDEX', KEYS[2], 0) ~= ARGV[1] then return redis.error_reply('the stack changed') end
else
  redis.call('SET', KEYS[4], ARGV[5])
  redis.call('LPUSH', KEYS[2], ARGV[1])
  redis.call('LTRIM', KEYS[2], 0, 999)
end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'digest', ARGV[1], 'at', ARGV[3], 'by', ARGV[4])
local fields = {'action', ARGV[6], 'version', ARGV[2], 'digest', ARGV[1], 'at', ARGV[3], 'by', ARGV[4]}
if prev_digest then
  table.insert(fields, 'previous_version'); table.insert(fields, prev_version)
  table.insert(fields, 'previous_digest'); table.insert(fields, prev_digest)
end
return redis.call('XADD', KEYS[3], '*', unpack(fields))
"""


class ModelRegistry:
    """The active model and its history in Redis (sync client; see module doc)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._switch = client.register_script(_SWITCH)

    @classmethod
    def from_url(cls, url: str) -> "ModelRegistry":
        return cls(sync_client(url))

    def active(self) -> ActiveModel | None:
        raw = self.client.hgetall(ACTIVE)
        if not raw:
            return None
        d = {_s(k): _s(v) for k, v in raw.items()}
        return ActiveModel(d["version"], d["digest"], int(d.get("at") or 0), d.get("by", ""))

    def model_text(self, digest: str) -> str | None:
        raw = self.client.get(yaml_key(digest))
        return None if raw is None else _s(raw)

    def active_model(self) -> ScoringModel | None:
        """The active model, parsed, or None when none was promoted."""
        active = self.active()
        if active is None:
            return None
        return _parse(self.model_text(active.digest), active.digest)

    def promote(self, text: str, by: str | None = None, baseline: str | None = None) -> ModelSwitch:
        """Make the model in ``text`` (a scoring model YAML) active. Raises ScoringModelError when
        it is invalid and ModelRegistryError when it is already the active model.

        ``baseline``: the model the workers run when none was promoted (their ``scoring_model``).
        The first promotion records it first (action ``baseline``), so a rollback can return to it.
        """
        model = load_scoring_model(text)
        active = self.active()
        if active is not None and active.digest == model.digest:
            raise ModelRegistryError(f"model {model.version} ({model.digest}) is already active")
        if active is None and baseline is not None and not self.client.exists(STACK):
            base = load_scoring_model(baseline)
            if base.digest != model.digest:
                self._do("baseline", base.version, base.digest, baseline, by)
        return self._do("promote", model.version, model.digest, text, by)

    def rollback(self, by: str | None = None) -> ModelSwitch:
        """Make the model active before the last promotion active again."""
        digests = [_s(d) for d in self.client.lrange(STACK, 0, 1)]
        if len(digests) < 2:
            raise ModelRegistryError("nothing to roll back to: no model was active before the current one")
        target = digests[1]
        text = self.model_text(target)
        model = _parse(text, target)
        return self._do("rollback", model.version, target, text or "", by)

    def history(self, limit: int = 100) -> list[ModelSwitch]:
        """The switches, newest first."""
        return [_switch(_s(i), f) for i, f in self.client.xrevrange(HISTORY, count=limit)]

    def _do(self, action: str, version: str, digest: str, text: str, by: str | None) -> ModelSwitch:
        at = int(time.time() * 1000)
        by = by or who()
        entry = _s(self._switch(keys=[ACTIVE, STACK, HISTORY, yaml_key(digest)],
                                args=[digest, version, at, by, text, action]))
        fields = self.client.xrange(HISTORY, min=entry, max=entry)
        return _switch(entry, fields[0][1])


def _parse(text: str | None, digest: str) -> ScoringModel:
    if text is None:
        raise ModelRegistryError(f"the text of model {digest} is missing from Redis")
    model = load_scoring_model(text)
    if model.digest != digest:
        # The model's schema changed since it was stored (a new default or field): say so.
        log.warning("stored model %s now has digest %s (the model schema changed since it was promoted)",
                    digest, model.digest)
    return model


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, (bytes, bytearray)) else str(value)


def _switch(entry_id: str, raw: Any) -> ModelSwitch:
    f = {_s(k): _s(v) for k, v in raw.items()}
    return ModelSwitch(entry_id, f["action"], f["version"], f["digest"], f.get("previous_version"),
                       f.get("previous_digest"), int(f["at"]), f.get("by", ""))


class ModelUser(Protocol):
    def use_model(self, model: ScoringModel) -> None: ...


class ModelFollower:
    """Keeps a stage on the active model: ``check`` switches it when the active digest changed."""

    def __init__(self, registry: ModelRegistry, stage: ModelUser, current: ScoringModel) -> None:
        self.registry = registry
        self.stage = stage
        self.digest = current.digest
        self.version = current.version
        self.switches = 0

    def check(self) -> bool:
        """One poll (a Redis round trip); True when the stage switched model."""
        found = self.fetch()
        if found is None:
            return False
        self.switch(*found)
        return True

    def fetch(self) -> tuple[ActiveModel, ScoringModel] | None:
        """The active model when it is not the one in use (blocking Redis reads). Never raises for a
        bad stored model: the worker keeps scoring with the model it has, and says so."""
        active = self.registry.active()
        if active is None or active.digest == self.digest:
            return None
        try:
            return active, _parse(self.registry.model_text(active.digest), active.digest)
        except Exception:
            log.exception("cannot load the active model %s (%s); keeping %s (%s)", active.version,
                          active.digest, self.version, self.digest)
            self.digest = active.digest  # do not retry a broken model every poll
            return None

    def switch(self, active: ActiveModel, model: ScoringModel) -> None:
        self.stage.use_model(model)
        log.warning("scoring model switched from %s (%s) to %s (%s), promoted by %s", self.version, self.digest,
                    model.version, active.digest, active.by)
        self.digest, self.version = active.digest, model.version
        self.switches += 1


def follow_models(app: Any, settings: Settings, stage: ModelUser) -> ModelFollower:
    """Make ``stage`` use the active model now (if one was promoted) and check for switches every
    ``stages.model_poll_s`` seconds in the Faust app (the Redis reads run in a thread, the switch
    on the event loop, between two records)."""
    import asyncio

    url = settings.redis.url_value
    assert url is not None
    follower = ModelFollower(ModelRegistry.from_url(url), stage, settings.load_scoring_model())
    try:
        follower.check()
    except Exception:  # Redis away at start: the timer tries again
        log.warning("could not read the active model from Redis; using %s for now", follower.version,
                    exc_info=True)

    async def poll_model() -> None:
        try:
            found = await asyncio.to_thread(follower.fetch)  # Redis off the event loop
        except Exception:
            log.warning("model check failed (Redis unreachable?); next try in %.0f s",
                        settings.stages.model_poll_s, exc_info=True)
            return
        if found is not None:
            follower.switch(*found)  # on the loop, between two records

    app.timer(settings.stages.model_poll_s, name="model-follower")(poll_model)
    return follower
