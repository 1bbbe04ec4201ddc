"""The hook's deadline in one process: the soft alarm, settling, and the documented margin."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from responder.config.settings import DeliverSettings
from responder.errors import DeadlineExceeded
from responder.hook.deadline import DEFAULT_DEADLINE, MARGIN, HookDeadline

README = Path(__file__).resolve().parent.parent / "README.md"


def test_default_deadline_is_the_configurations() -> None:
    assert DeliverSettings().deadline == DEFAULT_DEADLINE


def test_readme_states_the_margin() -> None:
    text = " ".join(README.read_text(encoding="utf-8").split())
    assert f"`responder deliver` has ended by `deliver.deadline` + {MARGIN:g} s after its start" in text
    assert f"must be longer than `deliver.deadline` + {MARGIN:g} s" in text
    assert f'deadline = "{DEFAULT_DEADLINE:g}s"' in text


def test_soft_deadline_strikes_an_unsettled_delivery() -> None:
    hook = HookDeadline(0.2, backstop=False)
    with pytest.raises(DeadlineExceeded, match=r"deadline of 0\.2s passed"), hook.soft():
        time.sleep(5)


def test_a_settled_decision_is_not_undone_by_the_soft_deadline() -> None:
    hook = HookDeadline(0.2, backstop=False)
    with hook.soft():
        hook.settle("suppress", "list-header")
        time.sleep(0.5)
    assert hook.settled and hook.decision == "suppress, reason list-header"


def test_the_deadline_counts_from_the_start_of_the_hook() -> None:
    hook = HookDeadline(0.2, backstop=False)
    time.sleep(0.3)
    with pytest.raises(DeadlineExceeded), hook.soft():
        pass
    hook.arm(10)
    assert 9 < hook.remaining() < 10
    assert hook.until_end() == pytest.approx(hook.remaining() + MARGIN, abs=0.1)
