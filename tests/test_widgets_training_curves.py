"""The live loss curve widget, driven from Python: as a callback, and through its controls."""

import html
import math

from utils.widgets.display import placeholder_png
from utils.widgets.training_curves import moving_average, training_curves

REFERENCE = {"uniform ln V": math.log(76), "bigram": 2.49}


def _history(n=40):
    steps = list(range(1, n + 1))
    loss = [4.3 * math.exp(-s / 15) + 1.5 + 0.1 * (-1) ** s for s in steps]
    return {"step": steps, "loss": loss, "lr": [1e-3] * n, "eval_step": [0, n],
            "train": [4.3, loss[-1]], "val": [4.33, loss[-1] + 0.1]}


def test_empty_widget_says_how_to_use_it():
    w = training_curves(reference=REFERENCE)
    assert bytes(w.image.value).startswith(b"\x89PNG")
    assert "callbacks" in w.message.value


def test_callback_records_events_and_redraws():
    w = training_curves(reference=REFERENCE, min_interval_s=0.0)
    first = bytes(w.image.value)
    w.update({"event": "eval", "step": 0, "train": 4.3, "val": 4.35})
    for step in range(1, 6):
        w.update({"event": "train", "step": step, "loss": 4.0 - 0.1 * step, "lr": 1e-3 * step})
    w.update({"event": "eval", "step": 5, "train": 3.4, "val": 2.4})
    w.update({"event": "end", "step": 5, "history": {}})
    assert w.history["step"] == [1, 2, 3, 4, 5] and w.history["val"] == [4.35, 2.4]
    assert bytes(w.image.value) != first
    assert "val 2.400" in w.message.value and "bigram" in w.message.value


def test_redraws_are_throttled_but_evaluations_always_draw():
    w = training_curves(min_interval_s=3600)
    w.update({"event": "train", "step": 1, "loss": 3.0, "lr": 1e-3})  # first draw is allowed
    drawn = bytes(w.image.value)
    w.update({"event": "train", "step": 2, "loss": 2.0, "lr": 1e-3})
    assert bytes(w.image.value) == drawn and w.history["step"] == [1, 2]
    w.update({"event": "eval", "step": 2, "train": 2.0, "val": 2.1})
    assert bytes(w.image.value) != drawn


def test_controls_change_the_picture():
    w = training_curves(_history(), reference=REFERENCE)
    for name, value in (("smoothing", 1), ("log_y", True), ("references", False),
                        ("smoothing", 50)):
        before = bytes(w.image.value)
        w.controls[name].value = value
        assert bytes(w.image.value) != before, name


def test_diverged_run_shows_an_error_message_not_a_traceback():
    w = training_curves(min_interval_s=0.0)
    w.update({"event": "train", "step": 1, "loss": float("nan"), "lr": 1e-3})
    assert "diverged" in w.message.value


def test_one_event_without_loss_is_left_out_and_the_widget_keeps_working():
    w = training_curves(min_interval_s=0.0)
    w.update({"event": "train", "step": 1})  # no loss: a broken caller
    assert "Left out: 1 train event without 'loss'" in html.unescape(w.message.value)
    assert w.history["step"] == [] and w.history["lr"] == []      # nothing half-recorded
    for step in (2, 3):
        w.update({"event": "train", "step": step, "loss": 3.0 / step, "lr": 1e-3})
    w.update({"event": "eval", "step": 3, "train": 1.0})          # val may be missing
    assert w.history["step"] == [2, 3] and w.history["loss"] == [1.5, 1.0]
    assert "step 3: batch loss 1.000" in w.message.value and "Could not" not in w.message.value
    assert w.image.value != placeholder_png()


def test_an_event_that_cannot_be_read_clears_the_picture():
    w = training_curves(_history(), min_interval_s=0.0)
    w.update({"event": "train", "step": "soon", "loss": 1.0, "lr": 1e-3})
    assert "Could not show" in w.message.value and w.image.value == placeholder_png()
    assert len(w.history["step"]) == len(w.history["loss"]) == 40  # nothing half-recorded
    w.update({"event": "train", "step": 41, "loss": 1.0, "lr": 1e-3})
    assert w.image.value != placeholder_png()


def test_steps_print_as_whole_numbers():
    w = training_curves(min_interval_s=0.0)
    w.update({"event": "train", "step": 100.0, "loss": 2.0, "lr": 1e-3})
    w.update({"event": "eval", "step": 100.0, "train": 2.0, "val": 2.1})
    assert "step 100: batch loss" in w.message.value and "at step 100 train" in w.message.value
    assert "100.0" not in w.message.value
    floats = {**_history(3), "step": [1.0, 2.0, 3.0], "eval_step": [0.0, 3.0]}
    assert "step 3: batch" in training_curves(floats).message.value


def test_picture_is_shown_at_its_own_size():
    w = training_curves()
    assert w.image.layout.max_width == "none" and w.image.layout.width is None


def test_moving_average():
    assert moving_average([2.0, 4.0, 6.0], 1).tolist() == [2.0, 4.0, 6.0]
    assert moving_average([2.0, 4.0, 6.0], 10).tolist() == [2.0, 3.0, 4.0]
    assert moving_average([], 5).tolist() == []
