"""JSONL file sink: one line per lead, appended (for local use)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any, Mapping

from ..settings import JsonlSinkSettings
from .base import Delivered, Failed, Outcome, lead_json


class JsonlSink:
    """Appends ``lead`` as a JSON line and flushes it to disk before reporting it delivered.

    Idempotent: the file is its own record of what it holds (its lead ids are read once,
    on the first delivery), so a lead written just before a crash is not written again.
    """

    kind = "jsonl"

    def __init__(self, config: JsonlSinkSettings) -> None:
        self.path = Path(config.path)
        self._lock = asyncio.Lock()
        self._written: set[str] | None = None

    def _load(self) -> set[str]:
        ids: set[str] = set()
        if self.path.exists():
            with open(self.path, encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    try:
                        ids.add(str(json.loads(line)["lead_id"]))
                    except (ValueError, KeyError, TypeError):  # a line cut short by a crash
                        continue
        return ids

    def _append(self, line: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    async def deliver(self, lead: Mapping[str, Any]) -> Outcome:
        lead_id = str(lead["lead_id"])
        async with self._lock:
            try:
                if self._written is None:
                    self._written = await asyncio.to_thread(self._load)
                if lead_id in self._written:
                    return Delivered(f"already in {self.path}", already=True)
                await asyncio.to_thread(self._append, lead_json(lead))
            except OSError as exc:
                return Failed(f"{type(exc).__name__}: {exc}")
            self._written.add(lead_id)
        return Delivered(str(self.path))

    async def aclose(self) -> None:
        return None
