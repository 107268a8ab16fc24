"""Muon from its update rule, and Muon + AdamW for a GPT (utils/muon.py).

Tolerance of the comparisons with torch.optim.Muon: 1e-6 of the largest distance a weight has
moved (relative to the updates, not to the weights). Our code runs the same bfloat16
operations in the same order as torch's, so on one machine the numbers are equal to the bit
(they are, today); 1e-6 leaves room only for float32 sums taken in another order. One
bfloat16 rounding is up to 2**-9, about 2e-3 of a value, so any change in what is computed
in bfloat16 (or computing it in float32 instead) fails the test: the negative controls below
each differ by 1e-2 or more.
"""

import copy
import io
import itertools

import pytest
import torch

import utils.muon as muon_module
from utils.model import GPT, GPTConfig
from utils.muon import (
    NS_COEFFICIENTS,
    Muon,
    MuonWithAdamW,
    adjusted_lr,
    configure_muon,
    muon_param_groups,
    newton_schulz,
)
from utils.optim import lr_at

SHAPES = [(32, 32), (16, 48), (48, 16)]   # square, wide, tall
TOL = 1e-6


def _trajectory(make_optimizer, steps=5, seed=0):
    """How far each matrix has moved after each of `steps` updates. Each gradient is fresh
    noise plus the weights themselves (the gradient of a quadratic), so it depends on the
    path taken."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(shape, generator=gen).requires_grad_() for shape in SHAPES]
    start = [p.detach().clone() for p in params]
    optimizer = make_optimizer(params)
    path = []
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen) + p.detach()
        optimizer.step()
        path.append([p.detach() - p0 for p, p0 in zip(params, start, strict=True)])
    return path, optimizer


def _max_rel_diff(path_a, path_b):
    """The largest difference between two paths, as a fraction of the largest move of b (the
    updates, not the weights: a slip in a step of 0.02 is not hidden by weights of size 3)."""
    return max(((a - b).abs().max() / b.abs().max()).item()
               for step_a, step_b in zip(path_a, path_b, strict=True)
               for a, b in zip(step_a, step_b, strict=True))


SETTINGS = list(itertools.product([True, False], [0.0, 0.1],
                                  [None, "original", "match_rms_adamw"]))


@pytest.mark.parametrize("nesterov, weight_decay, adjust_lr_fn", SETTINGS)
def test_muon_takes_the_same_steps_as_torch(nesterov, weight_decay, adjust_lr_fn):
    kwargs = dict(lr=0.02, weight_decay=weight_decay, nesterov=nesterov,
                  adjust_lr_fn=adjust_lr_fn)
    ours, opt = _trajectory(lambda ps: Muon(ps, **kwargs))
    theirs, torch_opt = _trajectory(lambda ps: torch.optim.Muon(ps, **kwargs))
    assert _max_rel_diff(ours, theirs) <= TOL
    for p, q in zip(opt.param_groups[0]["params"], torch_opt.param_groups[0]["params"],
                    strict=True):
        buf, torch_buf = opt.state[p]["momentum_buffer"], torch_opt.state[q]["momentum_buffer"]
        assert ((buf - torch_buf).abs().max() / torch_buf.abs().max()).item() <= TOL


def test_muon_defaults_are_torchs():
    ours, theirs = _trajectory(Muon), _trajectory(torch.optim.Muon)
    assert _max_rel_diff(ours[0], theirs[0]) <= TOL
    torch_defaults = torch.optim.Muon([torch.zeros(2, 2, requires_grad=True)]).defaults
    ours_defaults = Muon([torch.zeros(2, 2, requires_grad=True)]).defaults
    # one argument more than torch's: the dtype of the products, torch's bfloat16 by default
    assert ours_defaults.pop("ns_dtype") == "bfloat16"
    assert ours_defaults == torch_defaults


def test_ns_dtype_float32_is_the_float32_iteration_and_configure_muon_picks_it_off_gpu():
    g = torch.Generator().manual_seed(5)
    w32, w16 = (torch.nn.Parameter(torch.randn(48, 16, generator=g)) for _ in range(2))
    with torch.no_grad():
        w16.copy_(w32)
    grad = torch.randn(48, 16, generator=g)
    start = w32.detach().clone()
    for p, dtype in ((w32, "float32"), (w16, "bfloat16")):
        p.grad = grad.clone()
        Muon([p], lr=0.02, weight_decay=0.0, nesterov=False, ns_dtype=dtype).step()
    # one step without momentum history: W - lr * scale * NS(g (1 - mu)) in that dtype
    expected = start - adjusted_lr(0.02, (48, 16), None) * newton_schulz(grad * 0.05,
                                                                        dtype=torch.float32)
    torch.testing.assert_close(w32.detach(), expected, rtol=0, atol=1e-6)
    assert (w16 - w32).abs().max() > 1e-5          # bfloat16 really rounds differently
    model = torch.nn.Module()
    model.blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4, bias=False)])
    model.embedding = torch.nn.Embedding(3, 4)             # AdamW's part
    assert configure_muon(model, 1e-3).muon.param_groups[0]["ns_dtype"] == "float32"
    assert configure_muon(model, 1e-3, device_type="cuda").muon.param_groups[0]["ns_dtype"] == \
        "bfloat16"
    with pytest.raises(ValueError, match="ns_dtype"):
        Muon([w32], ns_dtype="float16")


def test_muon_with_other_ns_settings_and_groups_matches_torch():
    def groups(params):   # one group per matrix, each with settings of its own
        return [{"params": [params[0]], "ns_steps": 3},
                {"params": [params[1]], "ns_coefficients": (2.0, -1.5, 0.5), "momentum": 0.8},
                {"params": [params[2]], "lr": 0.05, "eps": 1e-3}]
    ours, _ = _trajectory(lambda ps: Muon(groups(ps), lr=0.02))
    theirs, _ = _trajectory(lambda ps: torch.optim.Muon(groups(ps), lr=0.02))
    assert _max_rel_diff(ours, theirs) <= TOL


def test_state_dict_loads_into_torchs_muon_and_continues_the_same():
    path, opt = _trajectory(lambda ps: Muon(ps, lr=0.02), steps=3)
    params = [p.detach().clone().requires_grad_() for p in opt.param_groups[0]["params"]]
    start = [p.detach().clone() for p in params]
    ours, theirs = Muon(params, lr=0.02), torch.optim.Muon(
        [p.detach().clone().requires_grad_() for p in params], lr=0.02)
    # copies: load_state_dict keeps the very tensors it is given, which both would update
    ours.load_state_dict(copy.deepcopy(opt.state_dict()))
    theirs.load_state_dict(copy.deepcopy(opt.state_dict()))
    gen = torch.Generator().manual_seed(5)
    for _ in range(2):
        for p, q in zip(ours.param_groups[0]["params"], theirs.param_groups[0]["params"],
                        strict=True):
            p.grad = q.grad = torch.randn(p.shape, generator=gen)
        ours.step()
        theirs.step()
    got = [[p.detach() - p0 for p, p0 in zip(ours.param_groups[0]["params"], start, strict=True)]]
    expected = [[q.detach() - q0
                 for q, q0 in zip(theirs.param_groups[0]["params"], start, strict=True)]]
    assert _max_rel_diff(got, expected) <= TOL


# ----------------------------------------------------------------- negative controls

def _no_transpose(G, steps=5, coefficients=NS_COEFFICIENTS, eps=1e-7, dtype=torch.bfloat16):
    """newton_schulz forgetting to transpose a tall matrix: the rows x rows Gram matrix."""
    a, b, c = coefficients
    X = G.to(dtype)
    X = X / X.norm().clamp(min=eps)
    for _ in range(steps):
        A = X @ X.T
        X = torch.addmm(X, torch.addmm(A, A, A, beta=b, alpha=c), X, beta=a)
    return X


def _float32_ns(G, steps=5, coefficients=NS_COEFFICIENTS, eps=1e-7, dtype=None):
    return newton_schulz(G, steps, coefficients, eps, dtype=torch.float32)   # whatever asked


def _rounded_twice_ns(G, steps=5, coefficients=NS_COEFFICIENTS, eps=1e-7, dtype=None):
    """b A + c A² written out: A² is rounded to bfloat16 before it is scaled and added."""
    a, b, c = coefficients
    tall = G.size(0) > G.size(1)
    X = G.bfloat16().T if tall else G.bfloat16()
    X = X / X.norm().clamp(min=eps)
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * (A @ A)) @ X
    return X.T if tall else X


def _swapped_shape_lr(lr, shape, adjust_lr_fn):   # rows and cols confused
    return adjusted_lr(lr, tuple(shape)[::-1], adjust_lr_fn)


def _no_momentum(params):
    return Muon(params, lr=0.02, momentum=0.0)


@pytest.mark.parametrize("patch, make", [
    (("newton_schulz", _no_transpose), None),
    (("newton_schulz", _float32_ns), None),
    (("newton_schulz", _rounded_twice_ns), None),
    (("adjusted_lr", _swapped_shape_lr), None),
    (None, _no_momentum),
], ids=["no_transpose", "float32", "rounded_twice", "rows_cols_swapped", "no_momentum"])
def test_a_wrong_muon_differs_from_torch(monkeypatch, patch, make):
    if patch is not None:
        monkeypatch.setattr(muon_module, *patch)
    make = make or (lambda ps: Muon(ps, lr=0.02))
    ours, _ = _trajectory(make)
    theirs, _ = _trajectory(lambda ps: torch.optim.Muon(ps, lr=0.02))
    assert _max_rel_diff(ours, theirs) > 1000 * TOL


def test_the_transpose_saves_work_but_changes_no_math():
    """Without rounding (float64) the tall matrix's result is the same either way; only in
    bfloat16 does the order of the products show (the control above)."""
    G = torch.randn(48, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ours = newton_schulz(G, dtype=torch.float64)
    assert torch.allclose(ours, _no_transpose(G, dtype=torch.float64), atol=1e-10)
    assert not torch.allclose(newton_schulz(G), _no_transpose(G), atol=1e-3)


# ----------------------------------------------------------------- Newton-Schulz

def _iterate_polynomial(s, steps, coefficients=NS_COEFFICIENTS):
    a, b, c = coefficients
    for _ in range(steps):
        s = a * s + b * s**3 + c * s**5
    return s


@pytest.mark.parametrize("shape", SHAPES + [(24, 40)])
def test_newton_schulz_is_the_polynomial_applied_to_each_singular_value(shape):
    """U S Vᵀ -> U p⁵(S / ||G||_F) Vᵀ: singular vectors kept, each value through p five times.
    The spectrum spans 0.01 to 1, so small values and the band's top are both exercised."""
    gen = torch.Generator().manual_seed(1)
    k = min(shape)
    U, _ = torch.linalg.qr(torch.randn(shape[0], k, generator=gen, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(shape[1], k, generator=gen, dtype=torch.float64))
    s = torch.logspace(-2, 0, k, dtype=torch.float64) * 7.0
    G = U @ torch.diag(s) @ V.T
    expected = U @ torch.diag(_iterate_polynomial(s / s.norm(), 5)) @ V.T
    assert torch.allclose(newton_schulz(G, dtype=torch.float64), expected, atol=1e-10)
    # negative control: without the normalisation the values leave [0, 1] and blow up
    assert not torch.allclose(_iterate_polynomial(s, 5), _iterate_polynomial(s / s.norm(), 5))


@pytest.mark.parametrize("shape", SHAPES + [(128, 512)])
def test_newton_schulz_output_is_nearly_orthogonal_not_exactly(shape):
    """Random matrices (their smallest singular value is above 1/300 of the Frobenius norm):
    in bfloat16, every singular value of the output lands in [0.6, 1.25] (the polynomial's
    band is about [0.68, 1.2]); none is forced to 1, and some are 10% or more away."""
    G = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    out = newton_schulz(G)
    assert out.dtype == torch.bfloat16 and out.shape == G.shape
    sv = torch.linalg.svdvals(out.double())
    assert sv.min() > 0.6 and sv.max() < 1.25, (sv.min(), sv.max())
    assert (sv - 1).abs().max() > 0.1
    # negative control: the normalised input alone is nowhere near the band
    sv = torch.linalg.svdvals(newton_schulz(G, steps=0).double())
    assert not (sv.min() > 0.6 and sv.max() < 1.25)


def test_the_quintic_lifts_small_values_in_fewer_steps_than_the_cubic():
    """A square random matrix has a singular value near 1/150 of its Frobenius norm. Five
    quintic steps bring it into the band; five of the classic cubic (1.5, -0.5, 0), which
    does converge to exactly 1, leave it below 0.1 and need about 20 more."""
    G = torch.randn(32, 32, generator=torch.Generator().manual_seed(0))
    cubic = (1.5, -0.5, 0.0)

    def svdvals(steps, coefficients):
        return torch.linalg.svdvals(newton_schulz(G, steps, coefficients, dtype=torch.float32))

    assert svdvals(5, NS_COEFFICIENTS).min() > 0.6
    assert svdvals(5, cubic).min() < 0.1
    assert (svdvals(25, cubic) - 1).abs().max() < 1e-3


def test_newton_schulz_leaves_its_input_alone_and_survives_zero():
    G = torch.randn(8, 12).bfloat16()
    before = G.clone()
    newton_schulz(G)
    assert torch.equal(G, before)
    assert torch.equal(newton_schulz(torch.zeros(4, 6)), torch.zeros(4, 6, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="matrix"):
        newton_schulz(torch.zeros(2, 3, 4))


def test_adjusted_lr_gives_the_rms_it_promises():
    """An orthogonal [rows, cols] update has RMS 1/sqrt(max(rows, cols)); the two rules turn
    that into lr / sqrt(cols) and 0.2 * lr for every shape."""
    for rows, cols in SHAPES + [(64, 256), (256, 64)]:
        Q, _ = torch.linalg.qr(torch.randn(max(rows, cols), min(rows, cols),
                                           dtype=torch.float64))
        update = Q if rows >= cols else Q.T
        rms = update.pow(2).mean().sqrt().item()
        assert abs(adjusted_lr(1.0, (rows, cols), "original") * rms - cols**-0.5) < 1e-9
        assert abs(adjusted_lr(1.0, (rows, cols), "match_rms_adamw") * rms - 0.2) < 1e-9
        assert adjusted_lr(1.0, (rows, cols), None) == adjusted_lr(1.0, (rows, cols), "original")
    with pytest.raises(ValueError, match="adjust_lr_fn"):
        adjusted_lr(1.0, (2, 2), "adamw")


# ----------------------------------------------------------------- what Muon accepts

def test_muon_refuses_anything_but_matrices_and_says_what_to_do():
    Muon([torch.zeros(3, 4, requires_grad=True)])   # a matrix is fine (control)
    for shape in [(4,), (2, 3, 4)]:
        with pytest.raises(ValueError, match="AdamW.*configure_muon"):
            Muon([torch.zeros(3, 4, requires_grad=True), torch.zeros(shape, requires_grad=True)])
    opt = Muon([torch.zeros(3, 4, requires_grad=True)])
    with pytest.raises(ValueError, match="2-D"):
        opt.add_param_group({"params": torch.zeros(4, requires_grad=True)})
    for bad in [dict(lr=-1.0), dict(momentum=-0.1), dict(weight_decay=-1.0),
                dict(adjust_lr_fn="adamw"), dict(ns_steps=100)]:
        with pytest.raises(ValueError):
            Muon([torch.zeros(3, 4, requires_grad=True)], **bad)


# ----------------------------------------------------------------- a GPT's parameters

CONFIGS = {
    "gpt2": dict(),
    "untied": dict(tie_weights=False),
    "llama": dict(pos="rope", norm="rms", mlp="swiglu", bias=False, n_kv_head=1),
}


def _tiny_gpt(seed=0, **overrides):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16,
                         **overrides))


def _split_problems(model, for_muon, for_adamw):
    """What is wrong with a split: a parameter in both lists, in neither, or in the wrong one."""
    names = {id(p): n for n, p in model.named_parameters()}
    muon_ids, adamw_ids = [id(p) for p in for_muon], [id(p) for p in for_adamw]
    problems = []
    if len(set(muon_ids + adamw_ids)) != len(muon_ids + adamw_ids):
        problems.append("a parameter listed twice")
    if set(muon_ids) | set(adamw_ids) != set(names):
        problems.append("a parameter missing")
    for i in muon_ids:
        name = names.get(i, "?")
        if not (name.startswith("blocks.") and name.endswith(".weight")
                and "norm" not in name):
            problems.append(f"{name} should not be in Muon")
    for i in adamw_ids:
        name = names.get(i, "?")
        if name.startswith("blocks.") and dict(model.named_parameters())[name].ndim == 2:
            problems.append(f"{name} should be in Muon")
    return problems


@pytest.mark.parametrize("config", CONFIGS)
def test_every_gpt_parameter_goes_to_exactly_one_optimizer(config):
    model = _tiny_gpt(**CONFIGS[config])
    for_muon, for_adamw = muon_param_groups(model)
    assert _split_problems(model, for_muon, for_adamw) == []
    names = {id(p): n for n, p in model.named_parameters()}
    assert "embed.token.weight" in {names[id(p)] for p in for_adamw}
    if config == "untied":
        assert "lm_head.weight" in {names[id(p)] for p in for_adamw}
    per_block = 4 if config != "llama" else 5   # qkv, proj, up, (gate,) down
    assert len(for_muon) == per_block * model.config.n_layer


def test_the_split_checker_catches_wrong_splits():
    model = _tiny_gpt(tie_weights=False)
    params = list(model.parameters())
    naive = ([p for p in params if p.ndim == 2], [p for p in params if p.ndim != 2])
    assert any("embed.token.weight" in m for m in _split_problems(model, *naive))
    assert any("lm_head.weight" in m for m in _split_problems(model, *naive))
    for_muon, for_adamw = muon_param_groups(model)
    assert _split_problems(model, for_muon, for_adamw[1:])        # one dropped
    assert _split_problems(model, for_muon, for_adamw + for_muon[:1])   # one in both
    assert _split_problems(model, for_muon[1:], for_adamw + for_muon[:1])  # matrix to AdamW


def test_frozen_parameters_go_to_neither():
    model = _tiny_gpt()
    model.embed.token.weight.requires_grad_(False)
    model.blocks[0].attn.qkv.weight.requires_grad_(False)
    for_muon, for_adamw = muon_param_groups(model)
    frozen = {id(model.embed.token.weight), id(model.blocks[0].attn.qkv.weight)}
    assert not frozen & {id(p) for p in for_muon + for_adamw}
    assert len(for_muon) + len(for_adamw) == sum(p.requires_grad for p in model.parameters())


def test_configure_muon_sets_up_both_halves():
    model = _tiny_gpt()
    opt = configure_muon(model, lr=8e-3, weight_decay=0.1)
    assert isinstance(opt.muon, Muon) and isinstance(opt.adamw, torch.optim.AdamW)
    assert opt.muon.defaults["adjust_lr_fn"] == "match_rms_adamw"
    assert all(g["lr"] == 8e-3 for g in opt.param_groups)
    assert all(g["weight_decay"] == 0.1 for g in opt.muon.param_groups)
    decayed = {id(p): g["weight_decay"] for g in opt.adamw.param_groups for p in g["params"]}
    assert decayed[id(model.embed.token.weight)] == 0.1     # a table: decayed
    assert decayed[id(model.norm.weight)] == 0.0            # a gain: not decayed
    assert len(opt.param_groups) == len(opt.muon.param_groups) + len(opt.adamw.param_groups)


# ----------------------------------------------------------------- one optimizer for a loop

def _train(model, optimizer, steps, start=0, total=8):
    """A trainer's loop: the schedule sets every group's lr, then backward, step, zero."""
    for step in range(start, start + steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, 8e-3, warmup_steps=2, total_steps=total)
        gen = torch.Generator().manual_seed(100 + step)
        x = torch.randint(0, 40, (4, 16), generator=gen)
        _, loss = model(x, torch.roll(x, -1, dims=1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def test_a_resumed_run_equals_an_unbroken_one():
    unbroken = _tiny_gpt()
    _train(unbroken, configure_muon(unbroken, lr=8e-3), steps=6)

    def resumed(load_optimizer):
        model = _tiny_gpt()
        opt = configure_muon(model, lr=8e-3)
        _train(model, opt, steps=3)
        buffer = io.BytesIO()
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, buffer)
        buffer.seek(0)
        saved = torch.load(buffer, weights_only=True)
        fresh = _tiny_gpt(seed=1)   # other weights, so only the load can make them equal
        fresh.load_state_dict(saved["model"])
        opt = configure_muon(fresh, lr=8e-3)
        if load_optimizer:
            opt.load_state_dict(saved["optimizer"])
        _train(fresh, opt, steps=3, start=3)
        return fresh

    def same(a, b):
        return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))

    assert same(resumed(load_optimizer=True), unbroken)
    assert not same(resumed(load_optimizer=False), unbroken)   # control: momentum lost


def test_the_pair_trains_a_gpt_and_steps_both_halves():
    model = _tiny_gpt()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    _train(model, configure_muon(model, lr=8e-3), steps=3)
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, start[n])}
    assert moved == set(start)   # Muon's matrices and AdamW's tables, gains and biases


def test_the_pair_refuses_another_optimizers_state():
    model = _tiny_gpt()
    adamw = torch.optim.AdamW(model.parameters())
    with pytest.raises(ValueError, match="another optimizer"):
        configure_muon(model, lr=1e-3).load_state_dict(adamw.state_dict())


def test_the_pair_evaluates_a_closure_once():
    model = _tiny_gpt()
    opt, calls = configure_muon(model, lr=1e-3), []
    x = torch.randint(0, 40, (2, 16))

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = model(x, x)[1]
        loss.backward()
        return loss

    assert opt.step(closure) is not None and len(calls) == 1


class _MuonHalfOnly(MuonWithAdamW):
    """A pair that shows the loop only Muon's groups (a plausible slip)."""

    @property
    def param_groups(self):
        return self.muon.param_groups


@pytest.mark.parametrize("pair_class, skipped", [(MuonWithAdamW, True), (_MuonHalfOnly, False)])
def test_a_grad_scaler_sees_every_gradient_of_the_pair(pair_class, skipped):
    """float16 loss scaling: an inf in one of AdamW's gradients must skip the whole step.
    The scaler finds it through param_groups; a pair listing only Muon's groups steps on."""
    model = _tiny_gpt()
    opt = configure_muon(model, lr=1e-3)
    opt = pair_class(opt.muon, opt.adamw)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randint(0, 40, (2, 16))
    scaler.scale(model(x, x)[1]).backward()
    model.norm.weight.grad[0] = float("inf")
    scaler.unscale_(opt)
    scaler.step(opt)
    scaler.update()
    unchanged = all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    assert unchanged == skipped
