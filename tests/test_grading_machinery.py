"""The grader contract itself: one verdict printed, a bool returned, nothing raised."""

import numpy as np
import pytest
import torch

from tests.grading import assert_accepts, assert_not_attempted, assert_rejects, stub
from utils.checks.grading import (
    Hint,
    attempt,
    compare_with_reference,
    expect_close,
    expect_equal,
    expect_number,
    expect_value,
    grader,
    require_value,
    seeded_cases,
)


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


# ---- the machinery the hardened graders share ---------------------------------------------

@grader
def check_sorted(fn):
    """A tiny grader built like the chapters' ones: edge cases + seeded random cases."""
    cases = [([],), ([3, 1, 2],), ([5, 5, 1],)]
    cases += seeded_cases(lambda rng: ([int(i) for i in rng.integers(0, 1000, 8)],), n=10)
    compare_with_reference(fn, sorted, cases, expect_equal, name="my_sort",
                           diagnose=lambda got, exp, xs: "that is descending order"
                           if got == sorted(xs, reverse=True) else None)


@grader
def check_value(value):
    expect_value(require_value(value, "answer"), 0.125, "answer", tol=1e-4)


def test_exit_inside_learner_code_is_a_hint_not_an_exit():
    import sys

    assert "exit" in assert_rejects(check_double, lambda x: sys.exit(0))
    assert "exit" in assert_rejects(check_double, lambda x: exit())

    def raises_system_exit(x):
        raise SystemExit("bye")
    assert "SystemExit" in assert_rejects(check_sorted, raises_system_exit)


def test_exit_inside_the_grader_itself_is_caught():
    @grader
    def leaky(value):
        raise SystemExit(3)
    assert "SystemExit" in assert_rejects(leaky, 1)


def test_expect_number_rejects_strings_bools_and_lists():
    for bad in ("0.125", True, [0.125], {"answer": 0.125}):
        assert "number" in assert_rejects(check_value, bad)
    assert expect_number(np.float32(0.5), "x") == 0.5
    assert expect_number(torch.tensor(0.5), "x") == 0.5
    with pytest.raises(Hint, match="finite"):
        expect_number(float("inf"), "x")


def test_expect_value_says_the_direction_without_the_answer():
    assert_accepts(check_value, 0.12504)
    too_big, too_small = assert_rejects(check_value, 0.2), assert_rejects(check_value, 0.1)
    assert "too big" in too_big and "too small" in too_small
    assert "factor of 2" in assert_rejects(check_value, 0.25)
    assert "decimals" in assert_rejects(check_value, 0.126)
    for hint in (too_big, too_small, assert_rejects(check_value, 0.25)):
        assert "0.125" not in hint


def test_compare_with_reference_accepts_right_and_names_the_failing_input():
    assert_accepts(check_sorted, sorted)
    hint = assert_rejects(check_sorted, lambda xs: sorted(xs)[:-1] if len(xs) > 3 else sorted(xs))
    assert "my_sort([" in hint and "expected" in hint  # the input that failed is shown
    assert "descending" in assert_rejects(check_sorted, lambda xs: sorted(xs, reverse=True))


def test_compare_with_reference_catches_mutation_and_keeps_the_reference_clean():
    seen = []

    def sorts_in_place(xs):
        xs.sort()
        return xs

    def reference(xs):
        seen.append(list(xs))
        return sorted(xs)

    cases = [([3, 1, 2],)]
    with pytest.raises(Hint, match="changed its input"):
        compare_with_reference(sorts_in_place, reference, cases, expect_equal)
    assert seen == [[3, 1, 2]]  # the reference saw the original


def test_compare_with_reference_catches_tensor_mutation():
    def scales_in_place(x):
        x *= 2
        return x

    with pytest.raises(Hint, match="changed its input"):
        compare_with_reference(scales_in_place, lambda x: 2 * x, [(torch.ones(3),)],
                               lambda g, e, w: expect_close(g, e, w))


def test_seeded_cases_are_reproducible_and_varied():
    make = lambda rng: (int(rng.integers(0, 10**6)),)
    first, again = seeded_cases(make, n=5, seed=7), seeded_cases(make, n=5, seed=7)
    assert first == again and len(set(first)) == 5
    assert seeded_cases(make, n=5, seed=8) != first


def test_expect_tensor_names_what_was_wrong():
    from utils.checks.grading import Hint, expect_tensor
    ok = torch.ones(2, 3, requires_grad=True)
    out = expect_tensor(ok * 2, (2, 3), "x")
    assert not out.requires_grad and out.shape == (2, 3)
    with pytest.raises(Hint, match="expected a torch tensor, got list"):
        expect_tensor([[1.0, 2.0]], (1, 2), "x")
    with pytest.raises(Hint, match=r"expected shape \(2, 3\), got \(3, 2\)"):
        expect_tensor(torch.ones(3, 2), (2, 3), "x")


# ---- seeing which torch functions an answer calls ---------------------------------------


def test_torch_calls_sees_a_forbidden_function_however_it_is_spelled():
    import torch.nn.functional as F

    from utils.checks.grading import Hint, forbid_calls, torch_calls

    x = torch.randn(2, 8)
    spellings = [lambda x: F.layer_norm(x, (8,)),
                 lambda x: torch.nn.functional.layer_norm(x, (8,)),
                 lambda x: torch.nn.LayerNorm(8)(x)]
    for answer in spellings:
        assert F.layer_norm in [func for func, _ in torch_calls(answer, x)]
        with pytest.raises(Hint, match="layer_norm"):
            forbid_calls(answer, (x,), {F.layer_norm: "compute mean and variance yourself"})

    def by_hand(x):
        mean = x.mean(-1, keepdim=True)
        return (x - mean) / (x.var(-1, keepdim=True, unbiased=False) + 1e-5).sqrt()
    forbid_calls(by_hand, (x,), {F.layer_norm: "compute mean and variance yourself"})


def test_torch_calls_records_result_shapes():
    from utils.checks.grading import torch_calls

    W, B, A = torch.randn(6, 4), torch.randn(6, 2), torch.randn(2, 4)
    merged = torch_calls(lambda x: x @ (W + B @ A).T, torch.randn(3, 4))
    factored = torch_calls(lambda x: (x @ A.T) @ B.T + x @ W.T, torch.randn(3, 4))
    assert ((6, 4),) in [shapes for _, shapes in merged]
    assert ((6, 4),) not in [shapes for _, shapes in factored]


def test_a_difference_below_the_printed_digits_is_shown_in_full():
    """'expected 0.1235, got 0.1235' helps nobody: show the entry that differs with its digits."""
    from utils.checks.grading import Hint, expect_close

    expected = torch.tensor([[0.1, 0.123456], [0.3, 0.4]])
    got = expected.clone()
    got[0, 1] += 3e-6
    with pytest.raises(Hint) as caught:
        expect_close(got, expected, "f(x)", atol=1e-7, rtol=0)
    message = str(caught.value)
    assert "at index [0, 1]" in message and "0.123456" in message and "0.123459" in message
