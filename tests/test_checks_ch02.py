"""Chapter 02 graders: the solutions pass, plausible mistakes fail with a hint, stubs are
reported as not attempted.

Every wrong answer below is one a learner could really write; each must be rejected.
"""

import math

import torch

from tests.grading import (
    assert_accepts,
    assert_not_attempted,
    assert_rejects,
    right_on_first_call_only,
    stub,
)
from utils.checks import ch02 as check
from utils.embeddings import rotate_pairs, sinusoidal_positions
from utils.word_vectors import cosine_similarity

# ---- exercise 1: sinusoidal positions -------------------------------------------------------

def _angles(T, d, exponent=lambda i, d: 2 * i / d):
    i = torch.arange(d // 2, dtype=torch.float64)
    return torch.arange(T, dtype=torch.float64)[:, None] / 10000 ** exponent(i, d)


def _interleave(sin, cos):
    return torch.stack([sin, cos], -1).flatten(-2)


def test_sinusoidal_accepts_library_and_stub_not_attempted():
    assert_accepts(check.sinusoidal_positions, sinusoidal_positions)
    assert_not_attempted(check.sinusoidal_positions, stub)


def test_sinusoidal_rejects_swapped_sin_cos():
    wrong = lambda T, d: _interleave(_angles(T, d).cos(), _angles(T, d).sin())
    assert "swapped" in assert_rejects(check.sinusoidal_positions, wrong)


def test_sinusoidal_rejects_sines_then_cosines():
    wrong = lambda T, d: torch.cat([_angles(T, d).sin(), _angles(T, d).cos()], -1)
    assert "interleaves" in assert_rejects(check.sinusoidal_positions, wrong)


def test_sinusoidal_rejects_exponent_i_over_d():
    def wrong(T, d):
        a = _angles(T, d, lambda i, d: i / d)
        return _interleave(a.sin(), a.cos())
    assert "2i/d" in assert_rejects(check.sinusoidal_positions, wrong)


def test_sinusoidal_rejects_growing_frequencies():
    def wrong(T, d):  # 10000 ** (+2i/d): multiplies instead of divides
        a = _angles(T, d, lambda i, d: -2 * i / d)
        return _interleave(a.sin(), a.cos())
    assert "negative" in assert_rejects(check.sinusoidal_positions, wrong)


def test_sinusoidal_rejects_column_index_as_frequency_index():
    def wrong(T, d):  # cos in column 2i+1 uses the frequency of column 2i+1, not of pair i
        j = torch.arange(d, dtype=torch.float64)
        angles = torch.arange(T, dtype=torch.float64)[:, None] / 10000 ** (j / d)
        pe = torch.empty(T, d, dtype=torch.float64)
        pe[:, 0::2], pe[:, 1::2] = angles[:, 0::2].sin(), angles[:, 1::2].cos()
        return pe
    assert "same frequency" in assert_rejects(check.sinusoidal_positions, wrong)


def test_sinusoidal_rejects_wrong_shape_and_off_by_one_positions():
    assert "shape" in assert_rejects(check.sinusoidal_positions,
                                     lambda T, d: sinusoidal_positions(T, d).T)
    assert "position" in assert_rejects(check.sinusoidal_positions,
                                        lambda T, d: sinusoidal_positions(T + 1, d)[1:])


# ---- exercise 2: rotate one pair ------------------------------------------------------------

def rotate_pair(x1, x2, angle):
    out = rotate_pairs(torch.stack([x1, x2], -1), torch.cos(angle)[..., None],
                       torch.sin(angle)[..., None])
    return out[..., 0], out[..., 1]


def test_rotate_pair_accepts_library_and_stub_not_attempted():
    assert_accepts(check.rotate_pair, rotate_pair)
    assert_not_attempted(check.rotate_pair, stub)


def test_rotate_pair_rejects_clockwise():
    wrong = lambda x1, x2, a: rotate_pair(x1, x2, -a)
    assert "clockwise" in assert_rejects(check.rotate_pair, wrong)


def test_rotate_pair_rejects_missing_cross_terms_and_degrees():
    assert_rejects(check.rotate_pair, lambda x1, x2, a: (x1 * torch.cos(a), x2 * torch.cos(a)))
    assert "radians" in assert_rejects(check.rotate_pair,
                                       lambda x1, x2, a: rotate_pair(x1, x2, a * math.pi / 180))


def test_rotate_pair_names_math_cos_on_tensors():
    def wrong(x1, x2, angle):
        c, s = math.cos(angle), math.sin(angle)
        return x1 * c - x2 * s, x1 * s + x2 * c
    assert "torch.cos" in assert_rejects(check.rotate_pair, wrong)


def test_rotate_pair_rejects_a_single_tensor_and_swapped_outputs():
    assert "tuple" in assert_rejects(check.rotate_pair,
                                     lambda x1, x2, a: torch.stack(rotate_pair(x1, x2, a)))
    assert "order" in assert_rejects(check.rotate_pair, lambda x1, x2, a: rotate_pair(x1, x2, a)[::-1])


def test_rotate_pair_rejects_using_the_updated_x1():
    def sequential(x1, x2, angle):
        c, s = torch.cos(angle), torch.sin(angle)
        x1 = x1 * c - x2 * s
        x2 = x1 * s + x2 * c  # uses the new x1
        return x1, x2
    assert "new x1" in assert_rejects(check.rotate_pair, sequential)


def test_rotate_pair_rejects_in_place_rotation():
    def in_place(x1, x2, angle):
        y1, y2 = rotate_pair(x1, x2, angle)
        x1.copy_(y1)
        return x1, y2
    assert "changed its input" in assert_rejects(check.rotate_pair, in_place)


# ---- exercise 3: cosine similarity ----------------------------------------------------------

def test_cosine_accepts_library_torch_and_stub_not_attempted():
    assert_accepts(check.cosine_similarity, cosine_similarity)
    assert_accepts(check.cosine_similarity,
                   lambda a, b: torch.nn.functional.cosine_similarity(a, b, dim=-1))
    assert_not_attempted(check.cosine_similarity, stub)


def test_cosine_rejects_dot_product():
    assert "dot product" in assert_rejects(check.cosine_similarity,
                                           lambda a, b: (a * b).sum(-1))


def test_cosine_rejects_dividing_by_one_length():
    wrong = lambda a, b: (a * b).sum(-1) / a.norm(dim=-1)
    assert "one vector" in assert_rejects(check.cosine_similarity, wrong)


def test_cosine_rejects_wrong_axis():
    assert_rejects(check.cosine_similarity,
                   lambda a, b: (a * b).sum(0) / (a.norm(dim=0) * b.norm(dim=0)))


def test_cosine_rejects_norm_of_the_whole_tensor():
    # a.norm() is one number for all rows: right only when a is a single vector
    assert "each vector" in assert_rejects(check.cosine_similarity,
                                           lambda a, b: (a * b).sum(-1) / (a.norm() * b.norm()))


def test_cosine_rejects_squared_lengths():
    wrong = lambda a, b: (a * b).sum(-1) / ((a * a).sum(-1) * (b * b).sum(-1))
    assert "square root" in assert_rejects(check.cosine_similarity, wrong)


def test_cosine_rejects_nan_for_a_zero_vector():
    wrong = lambda a, b: (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
    assert "zero vector" in assert_rejects(check.cosine_similarity, wrong)


# ---- exercise 4: permutation equivariance ---------------------------------------------------

def is_permutation_equivariant(layer, x, perm):
    return torch.allclose(layer(x[perm]), layer(x)[perm], atol=1e-5)


def test_equivariance_accepts_solution_and_stub_not_attempted():
    assert_accepts(check.is_permutation_equivariant, is_permutation_equivariant)
    assert_not_attempted(check.is_permutation_equivariant, stub)


def test_equivariance_rejects_invariance_test():
    wrong = lambda layer, x, perm: torch.allclose(layer(x[perm]), layer(x), atol=1e-5)
    assert "invariance" in assert_rejects(check.is_permutation_equivariant, wrong)


def test_equivariance_rejects_constant_answers():
    assert_rejects(check.is_permutation_equivariant, lambda layer, x, perm: True)
    assert_rejects(check.is_permutation_equivariant, lambda layer, x, perm: False)


def test_equivariance_rejects_inverse_permutation_on_one_side():
    wrong = lambda layer, x, perm: torch.allclose(layer(x[perm]), layer(x)[perm.argsort()],
                                                  atol=1e-5)
    assert_rejects(check.is_permutation_equivariant, wrong)


def test_equivariance_rejects_sorted_rows():
    def sorted_rows(layer, x, perm):  # same values in some order is not the same order
        return torch.allclose(layer(x[perm]).sort(0).values, layer(x).sort(0).values, atol=1e-5)
    assert_rejects(check.is_permutation_equivariant, sorted_rows)


def test_equivariance_rejects_pooled_sums():
    wrong = lambda layer, x, perm: torch.allclose(layer(x[perm]).sum(0), layer(x).sum(0),
                                                  atol=1e-4)
    assert_rejects(check.is_permutation_equivariant, wrong)


def test_equivariance_rejects_first_row_only():
    wrong = lambda layer, x, perm: torch.allclose(layer(x[perm])[0], layer(x)[perm][0], atol=1e-5)
    assert_rejects(check.is_permutation_equivariant, wrong)


def test_equivariance_rejects_exact_equality():
    wrong = lambda layer, x, perm: torch.equal(layer(x[perm]), layer(x)[perm])
    assert "allclose" in assert_rejects(check.is_permutation_equivariant, wrong)


def test_equivariance_rejects_non_bool():
    assert "True or False" in assert_rejects(check.is_permutation_equivariant,
                                             lambda layer, x, perm: "yes")


# ---- every grader tries more than its first case ---------------------------------------------
# Each wrong answer below is right on the grader's first hand-picked case only: a grader thinned
# to that one case would accept it.

def test_every_grader_goes_past_its_first_case():
    wrong_table = lambda T, d: sinusoidal_positions(T, d).flip(0)
    assert_rejects(check.sinusoidal_positions,
                   right_on_first_call_only(sinusoidal_positions, wrong_table))
    assert_rejects(check.rotate_pair, right_on_first_call_only(
        rotate_pair, lambda x1, x2, a: rotate_pair(x1, x2, -a)))
    assert_rejects(check.cosine_similarity, right_on_first_call_only(
        cosine_similarity, lambda a, b: (a * b).sum(-1)))
    assert_rejects(check.is_permutation_equivariant, right_on_first_call_only(
        is_permutation_equivariant, lambda layer, x, perm: True))


# ---- answers of the wrong type, and inputs made the way the chapter makes them ---------------

def test_lists_where_tensors_are_expected_are_rejected():
    assert "tensor" in assert_rejects(check.sinusoidal_positions,
                                      lambda T, d: sinusoidal_positions(T, d).tolist())
    assert "tensor" in assert_rejects(check.cosine_similarity,
                                      lambda a, b: cosine_similarity(a, b).tolist())
    assert "tensor" in assert_rejects(
        check.rotate_pair, lambda x1, x2, a: tuple(y.tolist() for y in rotate_pair(x1, x2, a)))


def test_rotate_pair_rejects_view_on_the_sliced_halves_of_a_pair():
    def flattened(x1, x2, angle):  # x[..., 0::2] is not contiguous: .view(-1) raises on it
        shape = x1.shape
        y1, y2 = rotate_pair(x1.view(-1), x2.view(-1), angle.reshape(-1))
        return y1.view(shape), y2.view(shape)
    assert "view" in assert_rejects(check.rotate_pair, flattened)


def test_cosine_rejects_squared_lengths_multiplied_before_the_root():
    # fine for ordinary vectors; the product of squared lengths overflows for huge ones
    wrong = lambda a, b: (a * b).sum(-1) / torch.sqrt((a * a).sum(-1) * (b * b).sum(-1)).clamp_min(1e-8)
    assert "overflowed" in assert_rejects(check.cosine_similarity, wrong)


def test_cosine_broadcasts_a_batch_of_queries_against_a_table():
    def row_by_row(a, b):  # matrix-vector products: right for [n, d] with [d] only
        return (a @ b.T if b.dim() > 1 and a.dim() > 1 else (a * b).sum(-1)) / (
            a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-8)
    assert_rejects(check.cosine_similarity, row_by_row)
