"""Fixtures for both test tiers.

The fast tier (tests/unit) needs no broker. Everything under tests/integration
is marked `integration` automatically and gets the real Apache Kafka broker,
the embedded Tansu broker and Redis from tests/integration/conftest.py.
"""

from __future__ import annotations

import itertools
import re
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

_INTEGRATION_DIR = Path(__file__).parent / "integration"
_UNSAFE = re.compile(r"[^a-zA-Z0-9._-]+")
_counter = itertools.count()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "integration: needs the real Kafka broker and Redis started by the fixtures",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/integration `integration` (select with `-m`)."""
    for item in items:
        if _INTEGRATION_DIR in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """A function giving a fresh topic / consumer-group / key name per call.

    Names look like `<prefix>-<test name>-<n>-<random>`, only use characters
    Kafka accepts in topic names, and stay well under its 249-character limit,
    so tests never see each other's topics or committed offsets.
    """
    test = _UNSAFE.sub("-", request.node.name).strip("-")[:80]

    def make(prefix: str = "t") -> str:
        return f"{prefix}-{test}-{next(_counter)}-{uuid.uuid4().hex[:8]}"

    return make
