"""The grader contract itself: one verdict printed, a bool returned, nothing raised."""

import torch

from tests.grading import assert_accepts, assert_not_attempted, assert_rejects, stub
from utils.checks.grading import attempt, expect_close, grader, require_value


@grader
def check_double(fn):
    expect_close(attempt(fn, torch.tensor([1.0, 2.0])), [2.0, 4.0], "double([1, 2])")


@grader
def check_answer(value):
    expect_close(require_value(value, "answer"), 0.5, "answer")


def test_correct_function_accepted():
    assert_accepts(check_double, lambda x: 2 * x)


def test_wrong_function_gets_a_hint_naming_the_input():
    hint = assert_rejects(check_double, lambda x: x + 2)
    assert "double([1, 2])" in hint and "expected" in hint


def test_crashing_function_does_not_raise():
    hint = assert_rejects(check_double, lambda x: 1 / 0)
    assert "ZeroDivisionError" in hint


def test_forgotten_return_is_named():
    hint = assert_rejects(check_double, lambda x: None)
    assert "return" in hint


def test_stub_not_attempted():
    assert_not_attempted(check_double, stub)
    assert_not_attempted(check_answer, None)


def test_wrong_shape_reported():
    hint = assert_rejects(check_double, lambda x: torch.stack([x, x]))
    assert "shape" in hint


def test_nan_reported():
    hint = assert_rejects(check_answer, float("nan"))
    assert "NaN" in hint
