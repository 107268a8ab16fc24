"""Choose the BPE vocabulary size for chapter 11 by measuring it: writes data/bpe_vocab_sweep.json.

For each vocabulary size, the course's BPE tokenizer (chapter 01) is trained on the train split
(`utils.bpe_tokenizer.pretrained_bpe`) and a GPT of the shipped character model's shape
(6 blocks of width 128, 128-token context) is trained on its tokens for the same short budget
of steps with the shipped model's recipe (`python -m utils.train --preset shakespeare-char`
with a smaller batch and fewer steps). Every run has the same tokens per step, so nearly the
same training FLOPs; they differ only in the output layer's width. Each run's score is bits per
character on the whole held-out play (`utils.evaluation.text_bits_per_char`), the measure that
compares tokenizers fairly.

    OMP_NUM_THREADS=1 nice -n 5 python data/build_bpe_sweep.py            # about 15 CPU-minutes

Measured (2026-12-08, 2-core AMD EPYC, torch 2.13.0+cpu, 1 thread per run, two runs at once,
126-144 s each): bits per character fall with every doubling, 3.555 (256: bytes only) 2.997
(512) 2.930 (768) 2.891 (1024) 2.836 (1536) 2.812 (2048), with shrinking gains; more characters
per token means more text per step and a longer context in characters. The chapter trains the
best, 2048, for the full budget. What the sweep cannot show is over-fitting: at a longer budget
a larger vocabulary sees each of its rarer tokens fewer times.
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from utils.paths import DATA_DIR, RUNS_DIR

SIZES = (256, 512, 768, 1024, 1536, 2048)
STEPS, BATCH = 300, 16
OUT = DATA_DIR / "bpe_vocab_sweep.json"


def one_run(vocab_size: int) -> dict:
    from utils.train import run_from_args

    out_dir = RUNS_DIR / "bpe_sweep" / f"bpe{vocab_size}_L6_d128_T128_s{STEPS}_b{BATCH}"
    run_from_args(["--preset", "shakespeare-char", "--bpe-vocab", str(vocab_size),
                   "--max-steps", str(STEPS), "--batch-size", str(BATCH),
                   "--warmup-steps", "30", "--eval-interval", str(STEPS),
                   "--out-dir", str(out_dir), "--no-progress"])
    record = json.loads((out_dir / "model.json").read_text())
    return {"vocab_size": vocab_size, "steps": STEPS, "tokens_per_step": record["tokens_per_step"],
            "chars_per_token_val": record["chars_per_token"]["val"],
            "val_loss_per_token": record["final_val_loss"],
            "val_bits_per_char": record["val_bits_per_char"],
            "seconds": record["seconds_this_session"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (one per core)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(one_run, SIZES))
    best = min(rows, key=lambda r: r["val_bits_per_char"])
    result = {"steps": STEPS, "batch_size": BATCH, "model": "6 blocks x 128, block_size 128",
              "rows": rows, "best_vocab_size": best["vocab_size"]}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for r in rows:
        print(f"vocab {r['vocab_size']:5d}: {r['chars_per_token_val']:.2f} chars/token, "
              f"{r['val_bits_per_char']:.3f} bits/char, {r['seconds']:.0f} s")
    print(f"best: {best['vocab_size']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
