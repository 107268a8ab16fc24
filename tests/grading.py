"""Helpers for grader tests: run a grader, capture what it prints, check the verdict."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from typing import Any

from utils.checks.grading import CORRECT, NOT_ATTEMPTED, WRONG


def verdict(grader: Callable[..., bool], *answers: Any) -> tuple[bool, str]:
    """Call a grader the way a notebook does; return (returned value, printed text)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = grader(*answers)
    return result, printed.getvalue()


def assert_accepts(grader: Callable[..., bool], *answers: Any) -> None:
    result, text = verdict(grader, *answers)
    assert result is True and text.startswith(CORRECT), text


def assert_rejects(grader: Callable[..., bool], *answers: Any) -> str:
    """The answer is wrong: False, a hint printed, never an exception. Returns the hint."""
    result, text = verdict(grader, *answers)
    assert result is False and text.startswith(WRONG), text
    return text


def assert_not_attempted(grader: Callable[..., bool], *answers: Any) -> None:
    result, text = verdict(grader, *answers)
    assert result is False and text.startswith(NOT_ATTEMPTED), text


def stub(*args: Any, **kwargs: Any) -> Any:
    """What an untouched exercise function does."""
    raise NotImplementedError
