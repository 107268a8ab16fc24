"""utils.batch_generation: a left-padded batch gives every prompt the text it gets alone.

The reference is always `utils.generation.generate` run on one prompt at a time, so nothing
here is copied from generate_batch's own output. The last tests take the mask or the per-row
positions away and show that the equality then breaks: it is those two that make it hold.
"""

import pytest
import torch

from utils import batch_generation
from utils.batch_generation import generate_batch
from utils.embeddings import RotaryEmbedding, TokenPositionEmbedding, apply_rope
from utils.generation import generate
from utils.model import GPT, POSITIONS, GPTConfig

VOCAB, BLOCK = 23, 32
LENGTHS = (1, 7, 3, 12, 5)             # a 1-token prompt, and 11 columns of padding for it
BUDGETS = (16, 9, 16, 20, 4)           # row 3 fills block_size exactly: 12 + 20 = 32


def make_model(pos: str, n_kv_head=None, seed=0, dropout=0.0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=2, n_head=4, n_embd=32,
                          n_kv_head=n_kv_head, pos=pos, dropout=dropout)).eval()
    with torch.no_grad():               # larger weights than the init, so positions matter
        for p in model.parameters():
            p.mul_(5.0 if p.dim() > 1 else 1.0)
    return model


def random_prompts(lengths=LENGTHS, seed=0) -> list[list[int]]:
    g = torch.Generator().manual_seed(100 + seed)
    return [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in lengths]


def alone(model, prompt, n, **kwargs) -> list[int]:
    return generate(model, torch.tensor([prompt]), n, temperature=0, **kwargs)[0].tolist()


# ---- greedy equality ---------------------------------------------------------------------

@pytest.mark.parametrize("pos", POSITIONS)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_kv_head", [None, 2])
def test_greedy_batch_equals_each_prompt_generated_alone(pos, seed, n_kv_head):
    model = make_model(pos, n_kv_head, seed)
    prompts = random_prompts(seed=seed)
    outs = generate_batch(model, prompts, list(BUDGETS))
    for prompt, n, out in zip(prompts, BUDGETS, outs, strict=True):
        assert out == alone(model, prompt, n)
        assert len(out) == len(prompt) + n and out[:len(prompt)] == prompt


def test_one_length_for_all_and_prompts_as_tensors():
    model = make_model("rope")
    prompts = random_prompts()
    outs = generate_batch(model, [torch.tensor(p) for p in prompts], 6)
    assert outs == [alone(model, p, 6) for p in prompts]


def test_equal_lengths_need_no_padding_and_still_match():
    model = make_model("learned")
    prompts = random_prompts((4, 4, 4))
    assert generate_batch(model, prompts, 10) == [alone(model, p, 10) for p in prompts]


def test_per_row_lengths_including_zero():
    model = make_model("learned")
    prompts = random_prompts((3, 6, 2))
    outs = generate_batch(model, prompts, [0, 5, 1])
    assert outs[0] == prompts[0]                                # nothing added, not even a pad
    assert [len(o) for o in outs] == [3, 11, 3]
    assert outs[1:] == [alone(model, prompts[1], 5), alone(model, prompts[2], 1)]
    assert generate_batch(model, prompts, 0) == prompts        # the model is never run


def test_per_row_stops_match_generate_and_other_rows_go_on():
    model = make_model("alibi")
    prompts = random_prompts()
    free = [alone(model, p, n) for p, n in zip(prompts, BUDGETS, strict=True)]
    token = free[0][len(prompts[0]) + 3]                        # row 0 writes it by step 4
    pair = free[2][len(prompts[2]) + 5: len(prompts[2]) + 7]    # two tokens of row 2's text
    for stop in (token, [token], [pair], [token, pair]):
        outs = generate_batch(model, prompts, list(BUDGETS), stop=stop)
        expected = [alone(model, p, n, stop=stop) for p, n in zip(prompts, BUDGETS, strict=True)]
        assert outs == expected
    outs = generate_batch(model, prompts, list(BUDGETS), stop=token)
    assert len(outs[0]) <= len(prompts[0]) + 4 and outs[0][-1] == token   # kept, and stopped
    # a row whose text never holds the stop token runs to its full length
    untouched = [i for i, f in enumerate(free) if token not in f[len(prompts[i]):]]
    assert untouched, "pick a stop token some row does not write"
    for i in untouched:
        assert outs[i] == free[i]


def test_repetition_penalty_matches_generate():
    model = make_model("none")
    prompts = random_prompts()
    outs = generate_batch(model, prompts, list(BUDGETS), repetition_penalty=1.8)
    assert outs == [alone(model, p, n, repetition_penalty=1.8)
                    for p, n in zip(prompts, BUDGETS, strict=True)]
    assert outs != generate_batch(model, prompts, list(BUDGETS))   # the penalty did something


# ---- padding never leaks -----------------------------------------------------------------

@pytest.mark.parametrize("pos", POSITIONS)
def test_a_row_does_not_depend_on_the_pad_id_or_the_other_rows(pos):
    model = make_model(pos, seed=3)
    short = random_prompts((2,), seed=9)[0]
    reference = generate_batch(model, [short], 15)[0]           # a batch of one: no padding
    for pad_id in (0, 7, VOCAB - 1):
        others = random_prompts((9, 4), seed=pad_id)
        assert generate_batch(model, [short, *others], [15, 6, 12], pad_id=pad_id)[0] == reference
    longer = random_prompts((17, 1, 11), seed=5)                 # more padding, other rows
    assert generate_batch(model, [*longer, short], [3, 15, 2, 15])[3] == reference


def test_the_mask_keeps_queries_off_pads_and_gives_pad_queries_themselves():
    pads, columns = torch.tensor([0, 2, 4]), torch.arange(1, 5)          # queries at 1..4
    mask = batch_generation._attention_mask(pads, columns, 5)
    assert mask.shape == (3, 1, 4, 5)
    for b, pad in enumerate(pads.tolist()):
        for t, col in enumerate(columns.tolist()):
            for key in range(5):
                allowed = key >= pad or (col < pad and key == col)
                assert bool(mask[b, 0, t, key]) == allowed, (b, col, key)


def test_finished_rows_leave_the_batch_and_all_pad_columns_are_cut(monkeypatch):
    model = make_model("learned")
    prompts = random_prompts((10, 2, 3))
    seen, step = [], batch_generation._step

    def spy(model, ids, pads, cache):
        seen.append((ids.size(0), cache.seq_len, pads.tolist()))
        return step(model, ids, pads, cache)

    monkeypatch.setattr(batch_generation, "_step", spy)
    outs = generate_batch(model, prompts, [2, 6, 4])
    # prefill, then a step per token: row 0 is done after 2 tokens, row 2 after 4
    assert [b for b, _, _ in seen] == [3, 3, 2, 2, 1, 1]
    # 10 + 1 columns cached when row 0 leaves; the first 7 are then padding in both rows left
    assert seen[2] == (2, 11 - 7, [1, 0])
    monkeypatch.undo()
    assert outs == [alone(model, p, n) for p, n in zip(prompts, [2, 6, 4], strict=True)]


# ---- what makes it work: take each piece away --------------------------------------------

@pytest.mark.parametrize("pos", POSITIONS)
def test_without_the_padding_mask_rows_change(pos, monkeypatch):
    model = make_model(pos)
    prompts = random_prompts()
    expected = [alone(model, p, n) for p, n in zip(prompts, BUDGETS, strict=True)]
    assert generate_batch(model, prompts, list(BUDGETS)) == expected

    def causal_only(pads, columns, n_keys):     # every key visible: pads are read too
        return torch.ones(len(pads), 1, len(columns), n_keys, dtype=torch.bool)

    monkeypatch.setattr(batch_generation, "_attention_mask", causal_only)
    outs = generate_batch(model, prompts, list(BUDGETS))
    assert outs[3] == expected[3]                   # the longest prompt has no padding
    assert outs != expected


def test_without_per_row_positions_learned_positions_change_the_text(monkeypatch):
    model = make_model("learned")
    prompts = random_prompts()
    monkeypatch.setattr(batch_generation, "_positions",
                        lambda pads, columns: columns.expand(len(pads), -1))   # batch columns
    outs = generate_batch(model, prompts, list(BUDGETS))
    assert outs != [alone(model, p, n) for p, n in zip(prompts, BUDGETS, strict=True)]


def test_rope_is_relative_so_shifted_positions_only_move_rounding(monkeypatch):
    """Why RoPE would survive without per-row positions: q·k depends on m - n only."""
    model = make_model("rope")
    idx = torch.tensor([random_prompts((8,))[0]])
    with torch.no_grad():
        base, _ = model(idx)
        shifted, _ = model(idx, positions=torch.arange(8)[None] + 13)
    assert torch.allclose(base, shifted, atol=1e-4)
    learned = make_model("learned")
    with torch.no_grad():
        moved, _ = learned(idx, positions=torch.arange(8)[None] + 13)
    assert not torch.allclose(learned(idx)[0], moved, atol=1e-2)


# ---- the positions argument of GPT.forward and its layers --------------------------------

@pytest.mark.parametrize("pos", POSITIONS)
def test_positions_equal_to_the_default_give_the_same_logits(pos):
    model = make_model(pos)
    idx = torch.tensor(random_prompts((6, 6)))
    with torch.no_grad():
        default, _ = model(idx)
        given, _ = model(idx, positions=torch.arange(6).expand(2, -1))
    assert torch.equal(default, given)


def test_positions_are_checked():
    model = make_model("learned")
    idx = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="positions must have the shape of idx"):
        model(idx, positions=torch.arange(4))
    with pytest.raises(ValueError, match=f"cannot run 33 positions: block_size is {BLOCK}"):
        model(idx, positions=torch.arange(29, 33).expand(2, -1))


def test_token_position_embedding_takes_a_position_per_id():
    emb = TokenPositionEmbedding(VOCAB, 8, max_len=10)
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    starts = torch.tensor([[0, 1, 2], [5, 6, 7]])
    out = emb(ids, start=starts)
    assert torch.equal(out[0], emb(ids[:1], start=0)[0])
    assert torch.equal(out[1], emb(ids[1:], start=5)[0])
    with pytest.raises(ValueError, match="shape of ids"):
        emb(ids, start=torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="positions 3..10 do not fit"):
        emb(ids, start=starts + 3)


def test_rotary_embedding_takes_a_position_per_row_also_past_its_table():
    rope = RotaryEmbedding(head_dim=8, max_len=6)
    x = torch.randn(2, 3, 4, 8)                                 # [B, heads, T, head_dim]
    positions = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])      # row 1 runs past the table
    out = rope(x, positions)
    for b in range(2):
        assert torch.allclose(out[b], apply_rope(x[b], positions[b]), atol=1e-6)
    assert torch.equal(rope(x[:1], positions[:1]), rope(x[:1], 0))


# ---- sampling, modes and errors ----------------------------------------------------------

def test_sampling_is_seeded_and_top_k_1_is_greedy():
    model = make_model("rope")
    prompts = random_prompts()

    def sample(seed, **kwargs):
        return generate_batch(model, prompts, list(BUDGETS), temperature=1.0,
                              generator=torch.Generator().manual_seed(seed), **kwargs)

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)
    assert [len(o) for o in sample(1, top_p=0.9)] == [a + b for a, b in zip(LENGTHS, BUDGETS, strict=True)]
    assert sample(3, top_k=1) == generate_batch(model, prompts, list(BUDGETS))


def test_dropout_is_off_while_generating_and_the_mode_is_restored():
    model = make_model("learned", dropout=0.5).train()
    prompts = random_prompts()
    first = generate_batch(model, prompts, 5)
    assert model.training
    assert first == generate_batch(model, prompts, 5) == [alone(model, p, 5) for p in prompts]


@pytest.mark.parametrize("args, kwargs, match", [
    (([], 3), {}, "prompts is empty"),
    ((torch.zeros(2, 3, dtype=torch.long), 3), {}, "prompts must be a list"),
    (([[1], []], 3), {}, r"prompts\[1\] is empty"),
    (([[1], [1.5]], 3), {}, r"prompts\[1\] must be a list of token ids"),
    (([[1], [VOCAB]], 3), {}, rf"prompts\[1\] holds id {VOCAB}, outside the vocabulary"),
    (([[1] * (BLOCK + 1)], 0), {}, rf"prompts\[0\] has 33 tokens, more than block_size={BLOCK}"),
    (([[1]], -1), {}, "max_new_tokens must be an int >= 0"),
    (([[1], [2]], [3, -1]), {}, r"max_new_tokens\[1\] must be an int >= 0"),
    (([[1], [2]], [3]), {}, "1 lengths for 2 prompts"),
    (([[1], [2] * 30], [3, 3]), {}, r"prompts\[1\]: 30 tokens \+ 3 new ones need 33 positions"),
    (([[1]], 3), {"temperature": -1}, "temperature"),
    (([[1]], 3), {"top_k": 0}, "top_k"),
    (([[1]], 3), {"top_p": 1.5}, "top_p"),
    (([[1]], 3), {"repetition_penalty": 0}, "repetition_penalty"),
    (([[1]], 3), {"pad_id": VOCAB}, "pad_id must be a token id"),
    (([[1]], 3), {"stop": [[]]}, "stop: each entry"),
])
def test_bad_arguments_raise_clear_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate_batch(make_model("none"), *args, **kwargs)
