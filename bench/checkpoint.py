"""Checkpoint cost for the reference model: seconds per save, and its share of training time.

Builds the reference config on the bundled dataset, times `--steps` training steps (after a
warm-up window) and `--saves` checkpoint saves (model, Adam slots, step, sampling state: what a
resume needs), and reports the overhead of saving every `train.checkpoint_every` steps (the
default, and a few alternatives). The default interval must keep saves under 5% of training.
Run it alone on the machine.

  .venv/bin/python bench/checkpoint.py [--data_dir runs/main/data]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

INTERVALS = (50, 100, 250, 500, 1000)
BUDGET = 0.05


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=common.DEFAULT_DATA_DIR)
    parser.add_argument("--steps", type=int, default=50, help="Timed training steps.")
    parser.add_argument("--saves", type=int, default=5, help="Timed checkpoint saves.")
    args = parser.parse_args()
    data_dir = common.ensure_dataset(args.data_dir)

    import tensorflow as tf

    from pipeline import config
    from trainer import train_loop

    cfg = config.build_config("attention_seq2seq/base", params_override=f"data.data_dir={data_dir}")
    with tempfile.TemporaryDirectory() as model_dir:
        trainer = train_loop.Trainer(cfg, model_dir, tf.distribute.get_strategy())
        trainer.runner.run(10)  # trace and warm up
        started = time.perf_counter()
        trainer.runner.run(args.steps)
        step_seconds = (time.perf_counter() - started) / args.steps
        save_seconds = []
        for number in range(args.saves):
            started = time.perf_counter()
            path = trainer.checkpoints.manager.save(checkpoint_number=number)
            save_seconds.append(time.perf_counter() - started)
        size = sum(
            os.path.getsize(os.path.join(model_dir, "checkpoints", f))
            for f in os.listdir(os.path.join(model_dir, "checkpoints"))
            if f.startswith(os.path.basename(path) + ".")
        )
    save = statistics.median(save_seconds)
    rows = [
        {
            "checkpoint_every": n,
            "overhead_percent": round(100 * save / (save + n * step_seconds), 2),
            "default": "yes" if n == cfg.train.checkpoint_every else "",
        }
        for n in INTERVALS
    ]
    print(f"step {step_seconds * 1e3:.0f} ms, save {save * 1e3:.0f} ms, {size / 1e6:.1f} MB")
    common.print_table(rows, ["checkpoint_every", "overhead_percent", "default"])
    default_overhead = save / (save + cfg.train.checkpoint_every * step_seconds)
    verdict = "within" if default_overhead < BUDGET else "OVER"
    print(f"default interval {cfg.train.checkpoint_every}: {verdict} the {BUDGET:.0%} budget")
    print(
        "written",
        common.write_json(
            "checkpoint",
            {
                "step_seconds": step_seconds,
                "save_seconds": save_seconds,
                "checkpoint_bytes": size,
                "overheads": rows,
            },
        ),
    )


if __name__ == "__main__":
    main()
