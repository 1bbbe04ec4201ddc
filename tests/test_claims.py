"""Interval claims under concurrency: distinct messages, pending claims of others, stale takeover."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.conftest import ConfigFactory
from tests.sink import SmtpSink
from tests.test_limits_race import OFF, RCPTS, _outcomes, _race, _vacations


@pytest.fixture
def db_url(backend_url: str) -> str:
    return backend_url


def test_zero_interval_answers_twelve_concurrent_messages_of_one_sender(
    make_config: ConfigFactory, db_url: str, sink: SmtpSink
) -> None:
    config = make_config(limits=OFF, reply={"min_interval": "0s"})
    _vacations(db_url, RCPTS[0], interval=0)
    runs = _race(config, [("bob@example.org", RCPTS[0], f"m{i}@example.org") for i in range(12)])
    assert [r.returncode for r in runs] == [0] * 12, [r.stderr for r in runs if r.returncode]
    assert _outcomes(db_url) == [("reply", "")] * 12
    # Every hook has ended, and the sink records a message before it accepts it.
    replies = Counter(str(m.message["In-Reply-To"]) for m in sink.messages)
    assert replies == {f"<m{i}@example.org>": 1 for i in range(12)}
