"""Chapter 02 graders: the solutions pass, plausible mistakes fail with a hint, stubs are
reported as not attempted."""

import math

import torch

from tests.grading import assert_accepts, assert_not_attempted, assert_rejects, stub
from utils.checks import ch02 as check
from utils.embeddings import rotate_pairs, sinusoidal_positions
from utils.word_vectors import cosine_similarity

# ---- exercise 1: sinusoidal positions -------------------------------------------------------

def _angles(T, d, exponent=lambda i, d: 2 * i / d):
    i = torch.arange(d // 2, dtype=torch.float64)
    return torch.arange(T, dtype=torch.float64)[:, None] / 10000 ** exponent(i, d)


def test_sinusoidal_accepts_library():
    assert_accepts(check.sinusoidal_positions, sinusoidal_positions)


def test_sinusoidal_rejects_swapped_sin_cos():
    wrong = lambda T, d: torch.stack([_angles(T, d).cos(), _angles(T, d).sin()], -1).flatten(-2)
    assert "swapped" in assert_rejects(check.sinusoidal_positions, wrong)


def test_sinusoidal_rejects_sines_then_cosines():
    wrong = lambda T, d: torch.cat([_angles(T, d).sin(), _angles(T, d).cos()], -1)
    assert "interleaves" in assert_rejects(check.sinusoidal_positions, wrong)


def test_sinusoidal_rejects_exponent_i_over_d():
    def wrong(T, d):
        a = _angles(T, d, lambda i, d: i / d)
        return torch.stack([a.sin(), a.cos()], -1).flatten(-2)
    assert "2i/d" in assert_rejects(check.sinusoidal_positions, wrong)


def test_sinusoidal_rejects_wrong_shape_and_off_by_one_positions():
    assert "shape" in assert_rejects(check.sinusoidal_positions,
                                     lambda T, d: sinusoidal_positions(T, d).T)
    assert_rejects(check.sinusoidal_positions, lambda T, d: sinusoidal_positions(T + 1, d)[1:])


def test_sinusoidal_stub_not_attempted():
    assert_not_attempted(check.sinusoidal_positions, stub)


# ---- exercise 2: rotate one pair ------------------------------------------------------------

def rotate_pair(x1, x2, angle):
    out = rotate_pairs(torch.stack([x1, x2], -1), torch.cos(angle)[..., None],
                       torch.sin(angle)[..., None])
    return out[..., 0], out[..., 1]


def test_rotate_pair_accepts_library():
    assert_accepts(check.rotate_pair, rotate_pair)


def test_rotate_pair_rejects_clockwise():
    wrong = lambda x1, x2, a: rotate_pair(x1, x2, -a)
    assert "clockwise" in assert_rejects(check.rotate_pair, wrong)


def test_rotate_pair_rejects_missing_cross_terms_and_degrees():
    assert_rejects(check.rotate_pair, lambda x1, x2, a: (x1 * torch.cos(a), x2 * torch.cos(a)))
    assert_rejects(check.rotate_pair, lambda x1, x2, a: rotate_pair(x1, x2, a * math.pi / 180))


def test_rotate_pair_names_math_cos_on_tensors():
    def wrong(x1, x2, angle):
        c, s = math.cos(angle), math.sin(angle)
        return x1 * c - x2 * s, x1 * s + x2 * c
    assert "torch.cos" in assert_rejects(check.rotate_pair, wrong)


def test_rotate_pair_rejects_a_single_tensor():
    assert "tuple" in assert_rejects(check.rotate_pair,
                                     lambda x1, x2, a: torch.stack(rotate_pair(x1, x2, a)))


def test_rotate_pair_stub_not_attempted():
    assert_not_attempted(check.rotate_pair, stub)


# ---- exercise 3: cosine similarity ----------------------------------------------------------

def test_cosine_accepts_library_and_torch():
    assert_accepts(check.cosine_similarity, cosine_similarity)
    assert_accepts(check.cosine_similarity,
                   lambda a, b: torch.nn.functional.cosine_similarity(a, b, dim=-1))


def test_cosine_rejects_dot_product():
    assert "dot product" in assert_rejects(check.cosine_similarity,
                                           lambda a, b: (a * b).sum(-1))


def test_cosine_rejects_dividing_by_one_length():
    wrong = lambda a, b: (a * b).sum(-1) / a.norm(dim=-1)
    assert "one vector" in assert_rejects(check.cosine_similarity, wrong)


def test_cosine_rejects_wrong_axis():
    assert_rejects(check.cosine_similarity,
                   lambda a, b: (a * b).sum(0) / (a.norm(dim=0) * b.norm(dim=0)))


def test_cosine_stub_not_attempted():
    assert_not_attempted(check.cosine_similarity, stub)


# ---- exercise 4: permutation equivariance ---------------------------------------------------

def is_permutation_equivariant(layer, x, perm):
    return torch.allclose(layer(x[perm]), layer(x)[perm], atol=1e-5)


def test_equivariance_accepts_solution():
    assert_accepts(check.is_permutation_equivariant, is_permutation_equivariant)


def test_equivariance_rejects_invariance_test():
    wrong = lambda layer, x, perm: torch.allclose(layer(x[perm]), layer(x), atol=1e-5)
    assert "invariance" in assert_rejects(check.is_permutation_equivariant, wrong)


def test_equivariance_rejects_constant_answers():
    assert_rejects(check.is_permutation_equivariant, lambda layer, x, perm: True)
    assert_rejects(check.is_permutation_equivariant, lambda layer, x, perm: False)


def test_equivariance_rejects_inverse_permutation_on_one_side():
    # undoing the shuffle on the wrong side only looks right for some permutations
    wrong = lambda layer, x, perm: torch.allclose(layer(x[perm]), layer(x)[perm.argsort()],
                                                  atol=1e-5)
    assert_rejects(check.is_permutation_equivariant, wrong)


def test_equivariance_rejects_non_bool():
    assert "True or False" in assert_rejects(check.is_permutation_equivariant,
                                             lambda layer, x, perm: "yes")


def test_equivariance_stub_not_attempted():
    assert_not_attempted(check.is_permutation_equivariant, stub)
