"""The worker's logging keeps the configured level: no debug records built per Kafka message."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import faust
import pytest

from pipeline.stages.worker import _Worker


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.mark.parametrize("level,number", [("warn", logging.WARNING), ("error", logging.ERROR),
                                          ("info", logging.INFO)])
def test_the_worker_logs_at_its_level_and_builds_no_debug_records(restore_logging: None, level: str,
                                                                  number: int) -> None:
    app = faust.App("logging-test", broker="kafka://127.0.0.1:1")
    worker = _Worker(app, loglevel=level, quiet=True, redirect_stdouts=False)
    worker._setup_logging()
    for name in ("aiokafka.producer.producer", "aiokafka.conn", "faust.topics", ""):
        assert logging.getLogger(name).getEffectiveLevel() == number, name
        assert not logging.getLogger(name).isEnabledFor(logging.DEBUG)
    assert logging.getLogger("pipeline.stages.runtime").isEnabledFor(number)
