"""The chapter 10 LoRA explorer driven from Python, and the shipped sweep it reads."""

import copy
import html
import json
import math
import re

import pytest

from utils.lora import apply_lora, count_trainable, linear_layers
from utils.pretrained import load_pretrained
from utils.widgets.display import placeholder_png
from utils.widgets.lora_explorer import (
    RANKS,
    SWEEP_PATH,
    TARGETS,
    TITLE,
    adapter_size,
    load_sweep,
    lora_explorer,
    sweep_result,
)


def text(w) -> str:
    return html.unescape(re.sub("<[^>]+>", "", w.message.value))


@pytest.fixture(scope="module")
def sweep():
    return load_sweep()


@pytest.fixture(scope="module")
def shipped():
    model, _ = load_pretrained("shakespeare-char")
    return model


# --------------------------------------------------------------------------- the shipped sweep

def test_sweep_layer_shapes_are_the_shipped_models(sweep, shipped):
    assert sweep["layers"] == {name: [m.out_features, m.in_features]
                               for name, m in linear_layers(shipped).items()}
    assert sweep["base"]["total"] == count_trainable(shipped)[1]


def test_sweep_counts_agree_with_apply_lora(sweep, shipped):
    for label, targets in sweep["target_sets"].items():
        assert [run["rank"] for run in sweep["runs"][label]] == [1, 2, 4, 8, 16]
        for run in sweep["runs"][label]:
            assert run["trainable"] == adapter_size(sweep["layers"], tuple(targets), run["rank"])[0]
            # the file held the adapters alone: 4 bytes a number and a header naming each
            # tensor (two a wrapped layer, ~100 bytes each)
            n_tensors = 2 * adapter_size(sweep["layers"], tuple(targets), run["rank"])[1]
            assert 4 * run["trainable"] < run["adapter_bytes"] < 4 * run["trainable"] + 150 * n_tensors
    adapted = apply_lora(copy.deepcopy(shipped), rank=4, alpha=8,
                         targets=sweep["target_sets"]["qkv+proj+mlp"])
    assert count_trainable(adapted)[0] == sweep_result(sweep, ("qkv", "proj", "up", "down"), 4)[
        "trainable"]


def test_sweep_losses_are_sane_and_documented(sweep):
    base = sweep["base"]["val_loss"]
    assert 1.0 < base < 2.5
    for runs in sweep["runs"].values():
        for run in runs:
            assert math.isfinite(run["val_loss"]) and math.isfinite(run["train_loss"])
            assert run["val_loss"] < base          # fine-tuning on the sonnets helps on the sonnets
    assert "build_lora_sweep.py" in sweep["command"]
    assert {"steps", "batch_size", "block_size", "lr", "seed"} <= set(sweep["settings"])


# --------------------------------------------------------------------------- the widget

def test_default_view_shows_counts_size_and_the_swept_loss(sweep):
    w = lora_explorer()
    assert TITLE in w.title.value and w.image.value[:4] == b"\x89PNG"
    shown = text(w)
    expected = sweep_result(sweep, ("qkv", "proj"), 8)
    assert f"{expected['trainable']:,} trainable" in shown
    assert f"validation loss {expected['val_loss']:.3f}" in shown
    assert f"{expected['adapter_bytes'] / 1000:,.1f} kB" in shown
    share = expected["trainable"] / sweep["base"]["total"]
    assert f"{share:.2%} of the model" in shown


def test_rank_slider_changes_picture_and_counts(sweep):
    w = lora_explorer()
    first_image, first_text = w.image.value, text(w)
    w.controls["rank"].value = 16
    assert w.image.value != first_image and text(w) != first_text
    assert f"{sweep_result(sweep, ('qkv', 'proj'), 16)['trainable']:,} trainable" in text(w)
    w.controls["rank"].value = 64                                 # beyond the sweep
    assert "not in the sweep" in text(w)
    count_8 = sweep_result(sweep, ("qkv", "proj"), 8)["trainable"]
    assert f"{8 * count_8:,} trainable" in text(w)                # r·(in+out): linear in r
    assert "Could not" not in w.message.value


def test_checkboxes_pick_the_layers(sweep):
    w = lora_explorer()
    w.controls["up"].value = True                                 # qkv+proj+up: not swept
    assert "not in the sweep" in text(w) and "18 layers wrapped" in text(w)
    w.controls["down"].value = True                               # all four: swept
    run = sweep_result(sweep, ("qkv", "proj", "up", "down"), 8)
    assert f"{run['trainable']:,} trainable" in text(w) and "24 layers wrapped" in text(w)


def test_no_layer_ticked_is_a_message_and_the_widget_recovers(sweep):
    w = lora_explorer(targets=("qkv",))
    assert "6 layers wrapped" in text(w)
    w.controls["qkv"].value = False
    assert "Tick at least one" in text(w)                         # a message, not a traceback
    assert w.image.value == placeholder_png()                      # no "rank 8" picture left
    w.controls["rank"].value = 128
    assert w.image.value == placeholder_png() and "Tick at least one" in text(w)
    w.controls["down"].value = True
    assert "6 layers wrapped" in text(w) and "not in the sweep" in text(w)


def test_extreme_ranks_draw_and_say_when_adapters_outgrow_the_model():
    w = lora_explorer(rank=min(RANKS))
    assert "Could not" not in w.message.value and w.image.value and "fewer" in text(w)
    w = lora_explorer(rank=max(RANKS), targets=tuple(TARGETS))    # r = 128 > 128·384/512
    assert "Could not" not in w.message.value and "outgrow" in text(w)
    assert not re.search(r"-\d", text(w))                           # no "-26% fewer"


def test_bad_arguments_and_files_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="rank"):
        lora_explorer(rank=3)
    with pytest.raises(ValueError, match="lm_head"):
        lora_explorer(targets=("lm_head",))
    with pytest.raises(FileNotFoundError, match="build_lora_sweep"):
        lora_explorer(tmp_path / "missing.json")


def test_a_damaged_sweep_shows_a_message_not_a_traceback(tmp_path):
    import matplotlib.pyplot as plt

    damaged = json.loads(SWEEP_PATH.read_text())
    for run in damaged["runs"]["qkv+proj"]:
        del run["val_loss"]
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(damaged))
    figures = len(plt.get_fignums())
    w = lora_explorer(path)
    assert "Could not show" in w.message.value and "val_loss" in w.message.value
    w.controls["rank"].value = 4                                  # still answers, still no raise
    assert "Could not show" in w.message.value
    assert len(plt.get_fignums()) == figures                      # no figure left open


def test_rank_slider_is_wide_enough_for_a_step_per_small_drag():
    w = lora_explorer()
    width = int(w.controls["rank"].layout.width.removesuffix("px"))
    assert (width - 100) / (len(w.controls["rank"].options) - 1) >= 40   # px of track per rank


def test_picture_is_shown_at_its_own_size():
    w = lora_explorer()
    assert w.image.layout.max_width == "none" and w.image.layout.width is None
