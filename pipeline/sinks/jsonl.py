"""JSONL file sink: one line per lead, appended (for local use)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, Mapping

from ..settings import JsonlSinkSettings
from .base import Delivered, Failed, Outcome, lead_json


class JsonlSink:
    """Appends ``lead`` as a JSON line and flushes it to disk before reporting it delivered."""

    kind = "jsonl"

    def __init__(self, config: JsonlSinkSettings) -> None:
        self.path = Path(config.path)
        self._lock = asyncio.Lock()

    def _append(self, line: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    async def deliver(self, lead: Mapping[str, Any]) -> Outcome:
        async with self._lock:
            try:
                await asyncio.to_thread(self._append, lead_json(lead))
            except OSError as exc:
                return Failed(f"{type(exc).__name__}: {exc}")
        return Delivered(str(self.path))

    async def aclose(self) -> None:
        return None
