"""utils.speculative: greedy speculative decoding writes the target's own greedy text, with a
draft model or with prompt lookup; with sampling, the tokens follow the target's distribution
(checked by a chi-square test); the caches are rolled back after rejections; the acceptance
rate counts only the proposals the target checked; bad arguments are named."""

import itertools
import math

import pytest
import torch

from utils.attention import KVCache
from utils.generation import generate
from utils.model import GPT, GPTConfig
from utils.speculative import (
    _accept_or_resample,
    _speculate,
    crop_cache,
    expected_speedup,
    expected_tokens_per_round,
    lookup_proposals,
    prompt_lookup_generate,
    speculative_generate,
)


def make_model(n_layer: int, seed: int, pos: str = "learned", vocab: int = 23, block: int = 16,
               scale: float = 4.0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=n_layer, n_head=2,
                          n_embd=16, pos=pos)).eval()
    with torch.no_grad():               # larger weights than the init: peaked, varied choices
        for p in model.parameters():
            p.mul_(scale if p.dim() > 1 else 1.0)
    return model


def similar_draft(target: GPT, noise: float, seed: int) -> GPT:
    """A copy of the target with noisy weights: agrees often, not always (as a real draft)."""
    draft = make_model(target.config.n_layer, seed, target.config.pos,
                       target.config.vocab_size, target.config.block_size)
    draft.load_state_dict(target.state_dict())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(noise * p.std() * torch.randn(p.shape, generator=g))
    return draft


@pytest.fixture(scope="module")
def pair():
    target = make_model(3, seed=0)
    return target, similar_draft(target, 0.6, seed=1)


# ---- greedy: exactly the target's text --------------------------------------------------------

@pytest.mark.parametrize("pos", ["learned", "rope", "alibi"])
def test_greedy_text_equals_the_targets_own(pos):
    target = make_model(3, seed=0, pos=pos)
    draft = similar_draft(target, 1.0, seed=1)
    accepted, proposed = 0, 0
    for k, prompt_len in [(1, 1), (3, 5), (6, 20), (2, 16)]:   # 20 > block_size: cropped
        idx = torch.randint(0, 23, (1, prompt_len), generator=torch.Generator().manual_seed(k))
        # 30 new tokens run past block_size=16: the sliding-window path is checked as well
        expected = generate(target, idx, 30, temperature=0)
        got, stats = speculative_generate(target, draft, idx, 30, k=k)
        assert torch.equal(got, expected), (pos, k, prompt_len)
        accepted, proposed = accepted + stats["accepted"], proposed + stats["proposed"]
    assert 0 < accepted < proposed        # both accepting and correcting were exercised


def test_an_unrelated_draft_still_gives_the_targets_text(pair):
    target, _ = pair
    stranger = make_model(1, seed=5)          # other weights, other depth: mostly rejected
    idx = torch.tensor([[3, 1, 4]])
    got, stats = speculative_generate(target, stranger, idx, 12, k=4)
    assert torch.equal(got, generate(target, idx, 12, temperature=0))
    assert stats["acceptance_rate"] < 0.5


def test_a_draft_equal_to_the_target_is_always_accepted(pair):
    target, _ = pair
    idx = torch.tensor([[1, 2]])
    got, stats = speculative_generate(target, target, idx, 11, k=4)
    assert torch.equal(got, generate(target, idx, 11, temperature=0))
    # 11 tokens = rounds of 4 proposals + 1 own token: 5 + 5, then 1 token with 0 proposals
    assert stats["rounds"] == 3 and stats["proposed"] == 8 and stats["accepted"] == 8
    assert stats["acceptance_rate"] == 1.0 and stats["target_calls"] == 3
    assert stats["draft_calls"] == 8 and stats["tokens_per_round"] == pytest.approx(11 / 3)


def test_stats_add_up(pair):
    target, draft = pair
    idx = torch.tensor([[7]])
    got, stats = speculative_generate(target, draft, idx, 14, k=3)
    assert got.shape == (1, 15)
    assert stats["target_calls"] == stats["rounds"]
    assert stats["draft_calls"] == stats["proposed"]          # one draft pass per proposal
    # each round writes its accepted proposals and one token of the target's own
    assert stats["accepted"] + stats["rounds"] == 14
    # a round stops at its first rejection: at most one checked-and-rejected proposal per round
    assert stats["accepted"] <= stats["checked"] <= stats["proposed"]
    assert stats["checked"] - stats["accepted"] <= stats["rounds"]
    assert stats["acceptance_rate"] == pytest.approx(stats["accepted"] / stats["checked"])


class ScriptedDraft:
    """Proposes the target's next greedy token, then k - 1 wrong ones: every round accepts
    one proposal and rejects the second, so the third and later are never checked."""

    def __init__(self, reference: list[int], vocab: int) -> None:
        self.reference, self.vocab = reference, vocab

    def propose(self, idx, n, temperature, generator):
        right = self.reference[idx.size(1):idx.size(1) + n]
        return right[:1] + [(t + 1) % self.vocab for t in right[1:]], []


def test_acceptance_counts_only_the_proposals_that_were_checked(pair):
    target, _ = pair
    idx = torch.tensor([[2, 5]])
    reference = generate(target, idx, 12, temperature=0)
    got, stats = _speculate(target, ScriptedDraft(reference[0].tolist(), 23), idx, 12, 4,
                            0.0, None)
    assert torch.equal(got, reference)
    # 6 rounds of 2 tokens (1 accepted + the target's correction); near the end fewer
    # proposals fit: 4, 4, 4, 4, 3, then 1 (which is accepted, so nothing is rejected)
    assert stats["rounds"] == 6 and stats["accepted"] == 6
    assert stats["proposed"] == 4 * 4 + 3 + 1 and stats["checked"] == 5 * 2 + 1
    assert stats["acceptance_rate"] == pytest.approx(6 / 11)     # not accepted / proposed


def test_zero_new_tokens_returns_the_prompt(pair):
    target, draft = pair
    idx = torch.tensor([[1, 2, 3]])
    got, stats = speculative_generate(target, draft, idx, 0)
    assert torch.equal(got, idx) and stats["proposed"] == 0 and stats["target_calls"] == 0


def test_models_are_left_in_their_training_mode(pair):
    target, draft = pair
    target.train()
    try:
        speculative_generate(target, draft, torch.tensor([[1]]), 3)
        assert target.training and not draft.training
    finally:
        target.eval()


# ---- the cache roll-back ---------------------------------------------------------------------

def test_crop_cache_keeps_a_prefix_that_decodes_like_a_fresh_prefill():
    model = make_model(2, seed=3, pos="rope")
    idx = torch.randint(0, 23, (1, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cache = KVCache(2)
        model(idx, kv_cache=cache)                            # 10 positions, 4 to roll back
        crop_cache(cache, 6)
        assert cache.seq_len == 6 and cache.keys[1].shape[-2] == 6
        after_crop, _ = model(idx[:, 6:8], kv_cache=cache)
        fresh, _ = model(idx[:, :8])
    assert torch.allclose(after_crop, fresh[:, 6:8], atol=1e-5)
    crop_cache(cache, 0)
    assert cache.seq_len == 0
    with pytest.raises(ValueError, match="seq_len"):
        crop_cache(cache, -1)


# ---- arguments -------------------------------------------------------------------------------

def test_bad_arguments_are_named(pair):
    target, draft = pair
    idx = torch.tensor([[1, 2]])
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="k "):
            speculative_generate(target, draft, idx, 5, k=bad)
    with pytest.raises(ValueError, match="vocab_size"):
        speculative_generate(target, make_model(1, seed=0, vocab=24), idx, 5)
    with pytest.raises(ValueError, match="empty"):
        speculative_generate(target, draft, idx[:, :0], 5)
    with pytest.raises(ValueError, match=r"\[1, T\]"):
        speculative_generate(target, draft, idx.repeat(2, 1), 5)
    with pytest.raises(ValueError, match="temperature"):
        speculative_generate(target, draft, idx, 5, temperature=-1.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        speculative_generate(target, draft, idx, -2)


# ---- sampling: the target's distribution, whatever the draft ------------------------------

VOCAB, NEW, SAMPLES = 3, 3, 1500


def sequence_probs(model: GPT, prompt: list[int], temperature: float) -> dict[tuple, float]:
    """The exact probability of every continuation of NEW tokens, by enumeration."""
    probs = {}
    with torch.no_grad():
        for seq in itertools.product(range(VOCAB), repeat=NEW):
            ids = torch.tensor([prompt + list(seq)])
            logits, _ = model(ids[:, :-1])
            p = torch.softmax(logits[0, -NEW:] / temperature, -1)
            probs[seq] = math.prod(float(p[i, t]) for i, t in enumerate(seq))
    return probs


def chi_square_rejects(counts: dict[tuple, int], probs: dict[tuple, float]) -> bool:
    """Pearson's chi-square test at the 0.1 % level; cells expected < 5 times are pooled."""
    n = sum(counts.values())
    cells, pooled_obs, pooled_exp = [], 0, 0.0
    for seq, p in probs.items():
        if n * p >= 5:
            cells.append((counts.get(seq, 0), n * p))
        else:
            pooled_obs, pooled_exp = pooled_obs + counts.get(seq, 0), pooled_exp + n * p
    if pooled_exp > 0:
        cells.append((pooled_obs, pooled_exp))
    stat = sum((o - e) ** 2 / e for o, e in cells)
    df = len(cells) - 1
    # 99.9 % quantile of chi-square(df), Wilson-Hilferty approximation (z = 3.09)
    critical = df * (1 - 2 / (9 * df) + 3.09 * math.sqrt(2 / (9 * df))) ** 3
    return stat > critical


@pytest.fixture(scope="module")
def sampled():
    """SAMPLES continuations by speculative sampling with a draft that differs a lot."""
    target = make_model(2, seed=10, vocab=VOCAB, block=8, scale=3.0)
    draft = make_model(1, seed=11, vocab=VOCAB, block=8, scale=3.0)
    prompt, temperature = [0, 2], 0.9
    g = torch.Generator().manual_seed(0)
    counts, accepted, proposed = {}, 0, 0
    for _ in range(SAMPLES):
        out, stats = speculative_generate(target, draft, torch.tensor([prompt]), NEW, k=2,
                                          temperature=temperature, generator=g)
        seq = tuple(out[0, len(prompt):].tolist())
        counts[seq] = counts.get(seq, 0) + 1
        accepted, proposed = accepted + stats["accepted"], proposed + stats["proposed"]
    return {"counts": counts, "target": sequence_probs(target, prompt, temperature),
            "draft": sequence_probs(draft, prompt, temperature),
            "acceptance": accepted / proposed}


def test_sampled_text_follows_the_targets_distribution(sampled):
    assert not chi_square_rejects(sampled["counts"], sampled["target"])
    assert 0.2 < sampled["acceptance"] < 0.95          # both accept and resample were used


def test_the_chi_square_test_can_tell_draft_from_target(sampled):
    # The same samples are clearly NOT from the draft's distribution: a rule that kept every
    # proposal (draft text) or resampled from p instead of max(0, p - q) would fail above.
    tv = 0.5 * sum(abs(sampled["target"][s] - sampled["draft"][s]) for s in sampled["target"])
    assert tv > 0.15, tv
    assert chi_square_rejects(sampled["counts"], sampled["draft"])


def test_the_accept_reject_rule_turns_draft_samples_into_target_samples():
    # One position, no model: x ~ q is kept with probability min(1, p/q), else replaced by a
    # draw from max(0, p - q). The token that comes out must follow p.
    p = torch.tensor([[0.6, 0.3, 0.1], [1 / 3, 1 / 3, 1 / 3]])     # row 1: the bonus position
    q = torch.tensor([[0.1, 0.3, 0.6]])
    g = torch.Generator().manual_seed(0)
    n = 6000
    drafts = torch.multinomial(q[0], n, replacement=True, generator=g).tolist()
    counts = {}
    for x in drafts:
        accepted, token = _accept_or_resample(p, q, [x], g)
        first = x if accepted == 1 else token
        counts[(first,)] = counts.get((first,), 0) + 1
    target = {(i,): float(p[0, i]) for i in range(3)}
    assert not chi_square_rejects(counts, target)
    # The same counts would expose the usual slips: keeping every proposal (giving q), or
    # resampling from p instead of the leftover (giving min(p, q) + (1 - sum min(p, q)) p).
    overlap = torch.minimum(p[0], q[0])
    resample_from_p = overlap + (1 - overlap.sum()) * p[0]
    for wrong in (q[0], resample_from_p):
        assert chi_square_rejects(counts, {(i,): float(wrong[i]) for i in range(3)})


def test_sampling_with_a_seed_is_repeatable_and_the_seed_matters(pair):
    target, draft = pair
    idx = torch.tensor([[4, 2]])
    runs = [speculative_generate(target, draft, idx, 20, k=3, temperature=1.0,
                                 generator=torch.Generator().manual_seed(s))[0] for s in (1, 1, 2)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_sampling_with_the_target_as_draft_accepts_everything(pair):
    target, _ = pair
    _, stats = speculative_generate(target, target, torch.tensor([[1]]), 16, k=3,
                                    temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert stats["acceptance_rate"] == 1.0


# ---- the speed-up formula --------------------------------------------------------------------

def test_expected_tokens_per_round_matches_a_simulation():
    g = torch.Generator().manual_seed(0)
    a, k, rounds = 0.7, 4, 20000
    accepts = torch.rand(rounds, k, generator=g) < a
    # tokens per round: the accepted run from the start, plus the target's own token
    run = accepts.int().cumprod(dim=1).sum(dim=1) + 1
    assert float(run.float().mean()) == pytest.approx(expected_tokens_per_round(a, k), rel=0.02)
    assert expected_speedup(a, k, cost_ratio=0.0) == pytest.approx(expected_tokens_per_round(a, k))
    with pytest.raises(ValueError, match="acceptance"):
        expected_tokens_per_round(1.5, 4)


def test_measured_acceptance_among_checked_proposals_predicts_tokens_per_round():
    # Rounds simulated with independent acceptances: the rate among checked proposals
    # recovers alpha, the rate among all proposals (accepted / proposed) underestimates it.
    g = torch.Generator().manual_seed(1)
    a, k, rounds = 0.7, 6, 20000
    run = (torch.rand(rounds, k, generator=g) < a).int().cumprod(dim=1).sum(dim=1)   # accepted
    checked = run + (run < k).int()
    alpha = float(run.sum() / checked.sum())
    per_round = float(run.float().mean()) + 1
    assert alpha == pytest.approx(a, abs=0.01)
    assert expected_tokens_per_round(alpha, k) == pytest.approx(per_round, rel=0.02)
    assert float(run.sum()) / (rounds * k) < 0.5 * a


# ---- prompt lookup: the text itself is the draft ---------------------------------------------

def test_lookup_proposals_copy_what_followed_the_latest_match():
    text = [1, 2, 9, 9, 1, 2, 7, 8, 3, 1, 2]
    assert lookup_proposals(text, ngram=2, k=3) == [7, 8, 3]      # latest match, not [9, 9, 1]
    assert lookup_proposals(text, ngram=2, k=1) == [7]
    assert lookup_proposals(text, ngram=3, k=3) == []            # "3 1 2" never occurred before
    assert lookup_proposals(text, ngram=1, k=2) == [7, 8]
    # the copy reaches the present and goes on copying itself: "1 2 7 8 3" repeats
    assert lookup_proposals(text, ngram=2, k=9) == [7, 8, 3, 1, 2, 7, 8, 3, 1]
    assert lookup_proposals([4, 4, 4], ngram=2, k=4) == [4, 4, 4, 4]   # overlapping match
    assert lookup_proposals([4], ngram=1, k=4) == []              # too short to repeat
    assert lookup_proposals([1, 2], ngram=5, k=4) == []


def looping_target(vocab: int = 23, block: int = 64) -> GPT:
    """A target whose greedy text soon repeats itself (the weights of a trained model are not
    needed for that: an untrained one with large weights falls into a cycle)."""
    return make_model(2, seed=3, vocab=vocab, block=block, scale=6.0)


@pytest.mark.parametrize("ngram,k", [(1, 1), (1, 4), (2, 3), (3, 8), (5, 2)])
def test_prompt_lookup_writes_the_targets_greedy_text(ngram, k):
    target = make_model(3, seed=0)
    accepted = 0
    for prompt in ([1, 2, 3, 1, 2], [7], [5, 5, 5, 5], list(range(20))):   # 20 > block_size 16
        idx = torch.tensor([prompt])
        expected = generate(target, idx, 25, temperature=0)
        got, stats = prompt_lookup_generate(target, idx, 25, k=k, ngram=ngram)
        assert torch.equal(got, expected), (ngram, k, prompt)
        assert stats["draft_calls"] == 0 and stats["target_calls"] == stats["rounds"]
        assert stats["accepted"] + stats["rounds"] == 25
        assert stats["checked"] <= stats["proposed"] <= k * stats["rounds"]
        accepted += stats["accepted"]
    assert accepted > 0                          # the accepting path was exercised


def test_prompt_lookup_without_any_match_is_plain_decoding():
    target = make_model(3, seed=0, vocab=40, block=64)
    idx = torch.arange(30)[None]                  # 30 distinct tokens: no 3-gram repeats yet
    expected = generate(target, idx, 2, temperature=0)
    got, stats = prompt_lookup_generate(target, idx, 2, k=4, ngram=3)
    assert torch.equal(got, expected)
    # round 1 finds no match; round 2 has room for the target's own token only
    assert stats["proposed"] == 0 and stats["rounds"] == 2 and stats["rounds_without_match"] == 1
    got, stats = prompt_lookup_generate(target, idx, 6, k=4, ngram=40)   # longer than the text
    assert torch.equal(got, generate(target, idx, 6, temperature=0))
    assert stats["proposed"] == 0 and stats["target_calls"] == 6
    assert stats["rounds_without_match"] == 5     # the last round may propose nothing anyway
    assert stats["acceptance_rate"] == 0.0


def test_prompt_lookup_pays_when_the_text_repeats():
    target = looping_target()
    idx = torch.tensor([[3, 1, 4]])          # its greedy text soon settles into 0 0 0 ...
    expected = generate(target, idx, 50, temperature=0)
    got, stats = prompt_lookup_generate(target, idx, 50, k=6, ngram=2)
    assert torch.equal(got, expected)
    assert stats["acceptance_rate"] > 0.8 and stats["tokens_per_round"] > 2.5


def test_prompt_lookup_bad_arguments_are_named(pair):
    target, _ = pair
    idx = torch.tensor([[1, 2]])
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="ngram"):
            prompt_lookup_generate(target, idx, 5, ngram=bad)
        with pytest.raises(ValueError, match="k "):
            prompt_lookup_generate(target, idx, 5, k=bad)
    with pytest.raises(ValueError, match=r"\[1, T\]"):
        prompt_lookup_generate(target, idx.repeat(2, 1), 5)


def test_prompt_lookup_sampling_follows_the_targets_distribution():
    target = make_model(2, seed=10, vocab=VOCAB, block=8, scale=3.0)
    prompt, temperature = [0, 2, 0], 0.9
    g = torch.Generator().manual_seed(0)
    counts, accepted, checked = {}, 0, 0
    for _ in range(SAMPLES):
        out, stats = prompt_lookup_generate(target, torch.tensor([prompt]), NEW, k=2, ngram=1,
                                            temperature=temperature, generator=g)
        seq = tuple(out[0, len(prompt):].tolist())
        counts[seq] = counts.get(seq, 0) + 1
        accepted, checked = accepted + stats["accepted"], checked + stats["checked"]
    assert not chi_square_rejects(counts, sequence_probs(target, prompt, temperature))
    assert 0.1 < accepted / checked < 0.95         # both accept and resample were used
