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


def right_on_first_call_only(right: Callable[..., Any], wrong: Callable[..., Any]) -> Callable[..., Any]:
    """A wrong answer that is right on the grader's first case and wrong on every later one.

    A grader whose cases were thinned to the first hand-picked one would accept it, so every
    grader test holds one of these: deleting cases from a grader makes a test fail."""
    calls = []

    def answer(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return (right if len(calls) == 1 else wrong)(*args, **kwargs)

    answer.__name__ = getattr(right, "__name__", "answer")
    return answer
