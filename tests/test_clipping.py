"""Gradient clipping from scratch (utils.optim.clip_grad_norm): the same numbers as
torch.nn.utils.clip_grad_norm_, and non-finite norms reported instead of turned into nan."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from utils.optim import clip_grad_norm

SHAPES = [(7, 5), (5,), (3, 4, 2), (1,), (64, 16)]


def _params(seed, shapes=SHAPES, scale=1.0, grad=True):
    """Parameters with seeded random gradients of very different sizes per tensor."""
    g = torch.Generator().manual_seed(seed)
    params = []
    for i, shape in enumerate(shapes):
        p = torch.nn.Parameter(torch.randn(shape, generator=g))
        if grad:
            p.grad = torch.randn(shape, generator=g) * scale * (10.0 ** (i % 3 - 1))
        params.append(p)
    return params


def _copies(params):
    out = []
    for p in params:
        q = torch.nn.Parameter(p.detach().clone())
        q.grad = None if p.grad is None else p.grad.clone()
        out.append(q)
    return out


def _assert_same_as_torch(clip, params, max_norm):
    single = isinstance(params, torch.Tensor)
    theirs = _copies([params] if single else params)
    norm = clip(params, max_norm)
    expected = torch.nn.utils.clip_grad_norm_(theirs[0] if single else theirs, max_norm)
    assert torch.allclose(norm, expected, rtol=1e-6), (norm, expected)
    for a, b in zip([params] if single else params, theirs, strict=True):
        assert (a.grad is None) == (b.grad is None)
        if a.grad is not None:
            assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-7), (a.grad - b.grad).abs().max()


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("max_norm", [0.01, 0.5, 3.0])
def test_same_norm_and_gradients_as_torch(seed, max_norm):
    params = _params(seed)
    before = torch.cat([p.grad.flatten() for p in params]).norm()
    assert before > max_norm   # these cases do clip
    _assert_same_as_torch(clip_grad_norm, params, max_norm)
    after = torch.cat([p.grad.flatten() for p in params]).norm()
    assert after == pytest.approx(max_norm, rel=1e-5)


def test_the_comparison_rejects_per_tensor_clipping():
    # negative control: clipping each tensor to max_norm on its own (a common slip) is caught
    def per_tensor(params, max_norm):
        norms = [torch.nn.utils.clip_grad_norm_([p], max_norm) for p in params]
        return torch.stack(norms).norm()

    with pytest.raises(AssertionError):
        _assert_same_as_torch(per_tensor, _params(0), 0.5)


def test_the_comparison_rejects_a_missing_square_root():
    def squared(params, max_norm):
        total = sum(p.grad.pow(2).sum() for p in params)
        for p in params:
            p.grad.mul_((max_norm / (total + 1e-6)).clamp(max=1.0))
        return total

    with pytest.raises(AssertionError):
        _assert_same_as_torch(squared, _params(1), 0.5)


def test_a_max_norm_above_the_norm_changes_nothing():
    params = _params(2, scale=1e-3)
    before = [p.grad.clone() for p in params]
    norm = clip_grad_norm(params, 1e3)
    assert norm < 1e3
    assert all(torch.equal(p.grad, b) for p, b in zip(params, before, strict=True))
    _assert_same_as_torch(clip_grad_norm, _params(2, scale=1e-3), 1e3)


def test_zero_gradients_give_norm_zero_and_no_nan():
    params = _params(3)
    for p in params:
        p.grad.zero_()
    assert clip_grad_norm(params, 1.0).item() == 0.0
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in params)


def test_parameters_without_a_gradient_are_skipped():
    params = _params(4)
    params[1].grad = None
    params[3].grad = None
    _assert_same_as_torch(clip_grad_norm, params, 0.5)
    assert params[1].grad is None and params[3].grad is None
    no_grads = _params(4, grad=False)
    assert clip_grad_norm(no_grads, 1.0).item() == 0.0
    assert all(p.grad is None for p in no_grads)


def test_a_single_tensor_and_a_generator_are_accepted():
    p = _params(5, shapes=[(4, 4)])[0]
    _assert_same_as_torch(clip_grad_norm, p, 0.1)
    params = _params(6)
    _assert_same_as_torch(lambda ps, m: clip_grad_norm(iter(ps), m), params, 0.1)


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_a_non_finite_gradient_is_reported_and_left_as_it_is(bad):
    params = _params(7)
    params[2].grad[0, 1, 0] = bad
    before = [p.grad.clone() for p in params]
    norm = clip_grad_norm(params, 1.0)
    assert not torch.isfinite(norm)
    assert math.isinf(norm) if not math.isnan(bad) else math.isnan(norm)
    for p, b in zip(params, before, strict=True):
        assert torch.equal(p.grad.nan_to_num(), b.nan_to_num())   # untouched, inf stays inf
    # negative control: torch's version would have turned the finite entries into 0 and the
    # inf into nan, so "untouched" above is a real difference, not a vacuous check
    theirs = _copies(params)
    torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    assert not all(torch.equal(p.grad.nan_to_num(), b.nan_to_num())
                   for p, b in zip(theirs, before, strict=True))


def test_an_overflowing_float16_step_is_skipped_by_the_grad_scaler():
    # the trainer's path under float16: scale, backward, unscale_, clip, scaler.step
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    weights = [p.detach().clone() for p in model.parameters()]
    loss = model(torch.full((2, 4), 1e35)).sum()          # finite, but x 2**16 overflows
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    norm = clip_grad_norm(model.parameters(), 1.0)
    assert math.isinf(norm)
    scaler.step(optimizer)
    scaler.update()
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights, strict=True))
    assert scaler.get_scale() < 2.0 ** 16                 # and the scale comes down


@pytest.mark.parametrize("max_norm", [0.0, -1.0, math.nan])
def test_a_max_norm_that_is_no_bound_is_refused(max_norm):
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm(_params(8), max_norm)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), log_scale=st.floats(-6, 6), max_norm=st.floats(1e-3, 1e3))
def test_clipped_norm_is_at_most_max_norm_and_the_direction_is_kept(seed, log_scale, max_norm):
    params = _params(seed, scale=10.0 ** log_scale)
    before = torch.cat([p.grad.flatten() for p in params])
    norm = clip_grad_norm(params, max_norm)
    after = torch.cat([p.grad.flatten() for p in params])
    assert norm == pytest.approx(before.norm().item(), rel=1e-5)
    assert after.norm() <= max_norm * (1 + 1e-5) or torch.equal(after, before)
    assert torch.allclose(after, before * (after.norm() / before.norm()), rtol=1e-4, atol=1e-30)
