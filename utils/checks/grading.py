"""The machinery every grader shares.

A grader is an ordinary function decorated with `@grader`. Inside it, call the learner's code
through `attempt(...)`, compare with `expect_*` helpers, and raise `Hint("...")` for anything
else that is wrong. The decorator turns the outcome into one printed verdict and a bool:

    @grader
    def double(fn):
        got = attempt(fn, 3)
        expect_equal(got, 6, "double(3)")

Stubs in the notebooks `raise NotImplementedError` (functions) or are left as `None` (values);
both are reported as "not attempted yet", never as a failure.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

CORRECT = "✅ Correct!"
NOT_ATTEMPTED = "⏳ Not attempted yet"
WRONG = "❌ Not yet"


class Hint(Exception):
    """Raised inside a grader: the answer is wrong, and the message says how."""


class NotAttempted(Exception):
    """Raised inside a grader: the learner has not filled in the stub yet."""


def grader(check: Callable[..., Any]) -> Callable[..., bool]:
    """Wrap a checking function so it prints one verdict and returns True only if correct."""

    @functools.wraps(check)
    def run(*args: Any, **kwargs: Any) -> bool:
        try:
            praise = check(*args, **kwargs)
        except NotAttempted as why:
            print(f"{NOT_ATTEMPTED}: {why}")
            return False
        except Hint as hint:
            print(f"{WRONG}: {hint}")
            return False
        except Exception as error:  # the learner's code may fail in any way: never re-raise
            print(f"{WRONG}: checking raised {type(error).__name__}: {error}")
            return False
        print(CORRECT + (f" {praise}" if isinstance(praise, str) else ""))
        return True

    return run


def attempt(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call the learner's function, translating the ways it can go wrong into verdicts."""
    if not callable(fn):
        raise Hint(f"expected a function, got {type(fn).__name__}")
    try:
        result = fn(*args, **kwargs)
    except NotImplementedError:
        raise NotAttempted(f"fill in `{getattr(fn, '__name__', 'the function')}` and run "
                           "its cell again") from None
    except Exception as error:
        shown = ", ".join(_short(a) for a in args)
        raise Hint(f"calling it with ({shown}) raised {type(error).__name__}: {error}") from None
    if result is None:
        raise Hint(f"`{getattr(fn, '__name__', 'your function')}` returned None — "
                   "did you forget a `return`?")
    return result


def require_value(value: Any, name: str) -> Any:
    """For value exercises (`answer = None` stubs): None means not attempted."""
    if value is None:
        raise NotAttempted(f"set `{name}` and run its cell again")
    return value


def expect_equal(got: Any, expected: Any, what: str) -> None:
    if got != expected:
        raise Hint(f"{what}: expected {_short(expected)}, got {_short(got)}")


def expect_shape(got: Any, shape: tuple[int, ...], what: str) -> None:
    got_shape = tuple(getattr(got, "shape", ()))
    if got_shape != tuple(shape):
        raise Hint(f"{what}: expected shape {tuple(shape)}, got {got_shape}")


def expect_close(got: Any, expected: Any, what: str, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """Compare numbers, arrays or tensors; the hint names the input and both values."""
    expected_t = torch.as_tensor(np.asarray(expected, dtype=np.float64) if not isinstance(
        expected, torch.Tensor) else expected).double()
    try:
        got_t = torch.as_tensor(got.detach() if isinstance(got, torch.Tensor) else np.asarray(
            got, dtype=np.float64)).double()
    except (TypeError, ValueError):
        raise Hint(f"{what}: expected a number or array, got {type(got).__name__}") from None
    if got_t.shape != expected_t.shape:
        raise Hint(f"{what}: expected shape {tuple(expected_t.shape)}, got {tuple(got_t.shape)}")
    if not torch.isfinite(got_t).all():
        raise Hint(f"{what}: the result contains NaN or inf")
    if not torch.allclose(got_t, expected_t, atol=atol, rtol=rtol):
        worst = (got_t - expected_t).abs().max().item()
        raise Hint(f"{what}: expected {_short(expected)}, got {_short(got)} "
                   f"(largest difference {worst:.3g})")


def _short(value: Any, limit: int = 120) -> str:
    """A one-line rendering of a value for hints, truncated so hints stay readable."""
    if isinstance(value, torch.Tensor):
        text = f"tensor(shape={tuple(value.shape)}, {value.detach().flatten()[:6].tolist()}...)" \
            if value.numel() > 6 else f"tensor({value.detach().tolist()})"
    elif isinstance(value, np.ndarray):
        text = f"array(shape={value.shape}, {value.flatten()[:6].tolist()}...)" \
            if value.size > 6 else f"array({value.tolist()})"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
