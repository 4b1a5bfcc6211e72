"""Running a Faust app as a worker process (what `leadstream worker` does)."""

from __future__ import annotations

from typing import Any, NoReturn

import faust


def run_worker(app: faust.App, loglevel: str = "info") -> NoReturn:
    """Run ``app`` until SIGTERM/SIGINT; a graceful stop finishes the records in flight."""
    level = {"warning": "warn"}.get(loglevel, loglevel)  # Faust spells it `warn`
    worker: Any = faust.Worker(app, loglevel=level, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
    raise SystemExit(0)  # execute_from_commandline exits itself; keeps the NoReturn contract
