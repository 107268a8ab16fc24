from utils.widgets.gradient_distance import gradient_distance_explorer


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


def test_extremes_stay_finite():
    w = gradient_distance_explorer(seq_len=300, recurrent_scale=0.5)
    w.controls["position"].value = 300
    assert "nan" not in w.readout.value.lower() and "error" not in w.readout.value.lower()
