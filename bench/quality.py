"""Translation quality against training time or steps: test BLEU and chrF at given marks.

Trains a config (default: the reference `attention_seq2seq/base`) on the bundled dataset, with the
runtime a user gets by default, and each time the training clock (or the step count, with
`--steps`) passes a mark, scores the whole test split with beam search (sacreBLEU on detokenized
text, with its signature). The clock counts training only (input, steps, logging); it stops while
a mark is scored, so the curve is comparable with another system's "minutes after launch" up to
its own evaluation cost. Step marks compare two configs at equal steps (e.g. float32 against
bfloat16). Run it alone: 2 cores, and any other job slows training.

  .venv/bin/python bench/quality.py --minutes 5,10,20 [--params_override ...]
  .venv/bin/python bench/quality.py --steps 700,1400 --params_override train.mixed_precision=...
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=common.DEFAULT_DATA_DIR)
    parser.add_argument("--minutes", default="5,10,20", help="Comma-separated marks.")
    parser.add_argument("--steps", default="", help="Comma-separated step marks (not minutes).")
    parser.add_argument("--experiment", default="attention_seq2seq/base")
    parser.add_argument("--params_override", default="")
    parser.add_argument("--name", default="quality", help="Results file name (bench/results/).")
    args = parser.parse_args()
    by_steps = bool(args.steps)
    marks = sorted(float(m) for m in (args.steps or args.minutes).split(","))
    data_dir = common.ensure_dataset(args.data_dir)

    from pipeline import config
    from trainer import distribution, train_loop

    overrides = f"data.data_dir={data_dir},train.train_steps=10000000"
    if args.params_override:
        overrides += "," + args.params_override
    cfg = config.build_config(args.experiment, params_override=overrides)
    rows = []
    with tempfile.TemporaryDirectory() as model_dir:
        strategy = distribution.build_strategy(cfg.runtime, distribution.cpu_replicas(cfg))
        trainer = train_loop.Trainer(cfg, model_dir, strategy)
        trained, steps = 0.0, 0
        last_report = time.perf_counter()
        for mark in marks:
            while (steps if by_steps else trained / 60) < mark:
                loop = cfg.train.steps_per_loop
                if by_steps:
                    loop = min(loop, int(mark) - steps)
                started = time.perf_counter()
                trainer.runner.run(loop)
                trained += time.perf_counter() - started
                steps += loop
                if time.perf_counter() - last_report > 60:
                    print(f"step {steps}, {trained / 60:.1f} min of training", flush=True)
                    last_report = time.perf_counter()
            result = trainer.evaluate("test")
            row = {
                "minutes": round(trained / 60, 2),
                "step": result["step"],
                "bleu": result["bleu"],
                "chrf": result["chrf"],
                "eval_seconds": result["seconds"],
            }
            rows.append(row)
            print(row, flush=True)
    print()
    common.print_table(rows, ["minutes", "step", "bleu", "chrf", "eval_seconds"])
    print(result["bleu_signature"])
    print(result["chrf_signature"])
    path = common.write_json(
        args.name,
        {
            "experiment": args.experiment,
            "params_override": args.params_override,
            "bleu_signature": result["bleu_signature"],
            "chrf_signature": result["chrf_signature"],
            "results": rows,
        },
    )
    print("written", path)


if __name__ == "__main__":
    main()
