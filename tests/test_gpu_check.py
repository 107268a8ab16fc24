"""tools/gpu_check.py rehearsed at toy sizes on the CPU: its parts run and report in tables.

The full check needs a GPU (see the script); this only proves the plan works before a GPU is
ever at hand, so a short GPU window is not spent on a typo."""

import json
import sys

from utils.paths import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT))

from tools import gpu_check  # noqa: E402


def test_markdown_table():
    table = gpu_check.markdown_table([{"a": 1, "b": "x"}, {"a": 2, "b": "y"}])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | x |", "| 2 | y |"]


def test_ladder_and_gpt2_parts_rehearse_on_cpu(capsys):
    assert gpu_check.main(["--device", "cpu", "--quick", "--part", "ladder", "--part", "gpt2"]) == 0
    printed = capsys.readouterr().out
    for rung in ("fp32", "+ TF32", "+ bfloat16 autocast", "+ SDPA", "+ fused AdamW",
                 "+ torch.compile"):
        assert f"| {rung} |" in printed
    record = json.loads((REPO_ROOT / "runs" / "gpu_check" / "cpu-quick.json").read_text())
    assert {"ladder", "gpt2"} <= set(record) and record["device"] == "cpu"
    assert all(row["tokens/s"] != "n/a" for row in record["ladder"]["rows"])


def test_craft_part_rehearses_muon_and_activation_memory_on_cpu(capsys):
    assert gpu_check.main(["--device", "cpu", "--quick", "--part", "craft"]) == 0
    rows = json.loads((REPO_ROOT / "runs" / "gpu_check" / "cpu-quick.json").read_text())[
        "craft"]["rows"]
    assert [row["what"] for row in rows] == ["adamw, 20 steps", "muon, 20 steps", "activations",
                                             "activations, checkpointed"]
    for row in rows[2:]:        # the count equals the measurement, on any device
        assert row["counted bytes"] == row["saved-tensor bytes"]
    assert rows[0]["val, whole held-out split"] != rows[1]["val, whole held-out split"]
