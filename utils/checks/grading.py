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

import copy
import functools
from collections.abc import Callable, Iterable
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
        except (Exception, SystemExit) as error:  # learner code may fail in any way, even
            # by calling exit(): never let it escape into the notebook
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
    except SystemExit:
        raise Hint(f"`{getattr(fn, '__name__', 'your function')}` called exit() (SystemExit); "
                   "return a value instead") from None
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


def expect_tensor(got: Any, shape: tuple[int, ...], what: str) -> torch.Tensor:
    """`got` as a detached tensor of exactly `shape`; anything else is a hint saying what it was."""
    if not isinstance(got, torch.Tensor):
        raise Hint(f"{what}: expected a torch tensor, got {type(got).__name__}")
    if tuple(got.shape) != tuple(shape):
        raise Hint(f"{what}: expected shape {tuple(shape)}, got {tuple(got.shape)}")
    return got.detach()


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
        difference = (got_t - expected_t).abs()
        worst = difference.max().item()
        shown_expected, shown_got = _short(expected), _short(got)
        if shown_expected == shown_got:   # equal at 4 digits: show the worst entry in full
            index = tuple(int(i) for i in torch.nonzero(difference == worst)[0].tolist())
            at = f" at index {list(index)}" if index else ""
            raise Hint(f"{what}: off by {worst:.3g}{at}: expected "
                       f"{expected_t[index].item():.10g}, got {got_t[index].item():.10g}")
        raise Hint(f"{what}: expected {shown_expected}, got {shown_got} "
                   f"(largest difference {worst:.3g})")


def expect_number(value: Any, name: str) -> float:
    """A value exercise wants one plain number: a string, a bool or a list is a wrong answer."""
    is_scalar_array = isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim == 0
    is_number = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
    if not (is_number or is_scalar_array):
        raise Hint(f"`{name}` should be a number, got {type(value).__name__} {_short(value)}")
    number = float(value)
    if not np.isfinite(number):
        raise Hint(f"`{name}` is {number}; expected a finite number")
    return number


def expect_value(value: Any, expected: float, name: str, tol: float) -> None:
    """Compare a learner's number with the answer; the hint says too big or too small and by
    roughly how much, never the answer itself. `tol` is the absolute tolerance accepted."""
    got = expect_number(value, name)
    if abs(got - expected) <= tol:
        return
    direction = "too big" if got > expected else "too small"
    ratio = got / expected if expected else float("inf")
    if expected and 0.98 < ratio < 1.02:
        how = (f"close, but off by {abs(got - expected):.2g}: keep more decimals "
               f"(within {tol:g} is accepted)")
    elif expected and got and _is_whole_factor(ratio):
        how = f"off by a factor of {max(ratio, 1 / ratio):.3g} — a missing or extra factor?"
    else:
        how = f"off by about {abs(got - expected) / (abs(expected) or 1):.0%}"
    raise Hint(f"`{name}` = {got:g} is {direction}: {how}")


def _is_whole_factor(ratio: float) -> bool:
    """True when got/expected is about 2, 3, 1/2, ...: a factor forgotten or applied twice."""
    bigger = max(abs(ratio), 1 / abs(ratio))
    return bigger > 1.5 and abs(bigger - round(bigger)) < 1e-3


def compare_with_reference(fn: Callable[..., Any], reference: Callable[..., Any],
                           cases: Iterable[tuple], compare: Callable[[Any, Any, str], None],
                           name: str | None = None, diagnose: Callable[..., str | None]
                           | None = None) -> None:
    """Run the learner's `fn` and the library's `reference` on every case (a tuple of
    arguments) and `compare(got, expected, what)` each result.

    Cases should mix hand-picked edge cases aimed at known mistakes with `seeded_cases(...)`
    that cover the realistic domain. Lists, dicts and arrays are copied before each call, so a
    function that changes its input is caught and cannot spoil a case for the next run.
    Tensors are handed over as they are, keeping their memory layout (a slice of a fused
    projection stays non-contiguous, as in the chapter), so build tensor cases inside the
    grader; a tensor changed in place is still caught.
    `diagnose(got, expected, *args)` may return a hint naming a recognisable mistake; it is
    consulted only when the comparison fails.
    """
    label = name or getattr(fn, "__name__", "your function")
    for args in cases:
        before = [_copy(a) for a in args]
        expected = reference(*[_copy(a) for a in args])
        given = [a if isinstance(a, torch.Tensor) else _copy(a) for a in args]
        got = attempt(fn, *given)
        for original, now in zip(before, given, strict=True):
            if not _same(original, now):
                raise Hint(f"{label}({_args(before)}) changed its input {_short(original)}; "
                           "only read it and return a new value")
        what = f"{label}({_args(before)})"
        try:
            compare(got, expected, what)
        except Hint:
            if diagnose is not None:
                mistake = diagnose(got, expected, *before)
                if mistake:
                    raise Hint(f"{what}: {mistake}") from None
            raise


def seeded_cases(make: Callable[[np.random.Generator], tuple], n: int = 25,
                 seed: int = 0) -> list[tuple]:
    """`n` argument tuples drawn by `make(rng)` from a fixed seed: random, but the same every
    run, so a hint a learner sees can be reproduced."""
    rng = np.random.default_rng(seed)
    return [make(rng) for _ in range(n)]


def _copy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, (list, dict, set)):
        return copy.deepcopy(value)
    return value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return (isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype
                and torch.allclose(a, b, rtol=0, atol=0, equal_nan=True))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and np.array_equal(a, b, equal_nan=True)
    return a == b


def _args(args: Iterable[Any]) -> str:
    return ", ".join(_short(a, 80) for a in args)


def _short(value: Any, limit: int = 120) -> str:
    """A one-line rendering of a value for hints, truncated so hints stay readable."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        kind = "tensor" if isinstance(value, torch.Tensor) else "array"
        flat = (value.detach().flatten() if kind == "tensor" else value.flatten()).tolist()
        numbers = ", ".join(f"{x:.4g}" if isinstance(x, float) else str(x) for x in flat[:6])
        # a shape is shown unless the value is a short row: [2, 3] printed flat hides the batch
        text = (f"{kind}(shape={tuple(value.shape)}, [{numbers}, ...])" if len(flat) > 6
                else f"{kind}(shape={tuple(value.shape)}, [{numbers}])" if value.ndim > 1
                else f"{kind}([{numbers}])")
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _CallRecorder(torch.overrides.TorchFunctionMode):
    """Notes every torch function called while active, with the shapes it returned."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Callable[..., Any], tuple[tuple[int, ...], ...]]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        outputs = result if isinstance(result, (tuple, list)) else (result,)
        shapes = tuple(tuple(o.shape) for o in outputs if isinstance(o, torch.Tensor))
        self.calls.append((func, shapes))
        return result


def torch_calls(fn: Callable[..., Any], *args: Any) -> list[tuple[Callable[..., Any], tuple]]:
    """Call `fn(*args)` (through `attempt`) and return every torch function it used, each with
    the shapes of the tensors it returned: `[(torch.nn.functional.layer_norm, ((2, 8),)), ...]`.

    This is how a grader sees a forbidden shortcut whichever way it was spelled
    (`F.layer_norm`, `torch.nn.functional.layer_norm`, `nn.LayerNorm(...)(x)` all reach the same
    function), or an intermediate an exercise rules out (a weight-sized `W + B @ A`)."""
    recorder = _CallRecorder()
    with recorder:
        attempt(fn, *args)
    return recorder.calls


def forbid_calls(fn: Callable[..., Any], args: tuple, forbidden: dict[Callable[..., Any], str]) -> None:
    """Raise a hint if `fn(*args)` calls any function in `forbidden` (function -> what the
    exercise asks for instead)."""
    for func, _ in torch_calls(fn, *args):
        if func in forbidden:
            name = f"{getattr(func, '__module__', 'torch')}.{func.__name__}".replace(
                "torch.nn.functional", "F")
            raise Hint(f"it calls `{name}`, which this exercise rules out: {forbidden[func]}")
