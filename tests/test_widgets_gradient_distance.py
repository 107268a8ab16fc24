import torch

from utils.widgets import gradient_distance
from utils.widgets.display import placeholder_png
from utils.widgets.gradient_distance import describe, gradient_distance_explorer


def test_moving_position_changes_readout_and_plot():
    w = gradient_distance_explorer(seq_len=40)
    before_text, before_image = w.readout.value, bytes(w.image.value)
    assert before_image.startswith(b"\x89PNG")
    w.controls["position"].value = 10
    assert "position 10" in w.readout.value
    assert w.readout.value != before_text and bytes(w.image.value) != before_image


def test_shorter_sequence_clamps_position():
    w = gradient_distance_explorer(seq_len=100)
    w.controls["position"].value = 90
    w.controls["seq_len"].value = 20
    assert w.controls["position"].value == 20 and "position 20" in w.readout.value


def test_recurrent_scale_changes_rnn_numbers():
    w = gradient_distance_explorer(seq_len=30)
    before = w.readout.value
    w.controls["recurrent_scale"].value = 1.5
    assert w.readout.value != before and "RNN" in w.readout.value


def test_changing_the_scale_reuses_the_attention_curve(monkeypatch):
    w = gradient_distance_explorer(seq_len=30)
    asked = []
    real = gradient_distance.compare_gradients

    def spy(*args, **kwargs):
        asked.append(kwargs.get("models"))
        return real(*args, **kwargs)

    monkeypatch.setattr(gradient_distance, "compare_gradients", spy)
    w.controls["recurrent_scale"].value = 1.2
    w.controls["position"].value = 3
    assert asked == [("rnn",)]  # attention does not depend on the RNN's scale; t needs nothing
    w.controls["seq_len"].value = 60
    assert asked == [("rnn",), ("rnn", "attention")]


def test_extremes_stay_finite():
    w = gradient_distance_explorer(seq_len=300, recurrent_scale=0.5)
    w.controls["position"].value = 300
    assert "nan" not in w.readout.value.lower() and "error" not in w.readout.value.lower()


def test_readout_names_the_stronger_model_first():
    grads = {"rnn": torch.tensor([0.9, 1e-3]), "attention": torch.tensor([0.3, 0.5])}
    assert "the RNN hears token 1 about 3× more strongly than attention" in describe(grads, 1)
    assert "attention hears token 1 about 500× more strongly than the RNN" in describe(grads, 2)
    assert "×" in describe(grads, 1) and "e-01×" not in describe(grads, 1)  # never a ratio < 1
    silent = {"rnn": torch.tensor([0.0]), "attention": torch.tensor([0.0])}
    assert "neither model" in describe(silent, 1)


def test_a_failing_computation_is_a_message_not_a_traceback(monkeypatch):
    w = gradient_distance_explorer(seq_len=30)

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(gradient_distance, "compare_gradients", broken)
    w.controls["seq_len"].value = 40  # must not raise
    assert "Could not show" in w.readout.value and "out of memory" in w.readout.value
    assert w.image.value == placeholder_png()  # not the curves of length 30 under "40"
    monkeypatch.undo()
    w.controls["seq_len"].value = 50  # and the widget still works afterwards
    assert "At position" in w.readout.value and w.image.value != placeholder_png()


def test_plot_is_shown_at_its_own_size():
    w = gradient_distance_explorer(seq_len=30)
    assert w.image.layout.max_width == "none" and w.image.layout.width is None
    assert w.children[-1].children == (w.image,)


def test_recall_plot_labels_each_distance_once():
    from utils.widgets.gradient_distance import plot_recall_accuracy
    ax = plot_recall_accuracy([2, 10, 40], {"rnn": [1.0, 0.2, 0.1], "attention": [1.0, 1.0, 1.0]})
    assert [t.get_text() for t in ax.get_xticklabels()] == ["2", "10", "40"]
    assert not ax.xaxis.get_minorticklabels()
    assert [line.get_label() for line in ax.get_lines()][:2] == ["RNN", "attention"]
