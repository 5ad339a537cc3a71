"""What the main job's dev evaluation costs, first and later, in a fresh process.

Restores a trained run (by default the main job's, `runs/main/model` after `make run`) into a
temporary copy, with the main job's strategy (two CPU replicas here), runs one short training
loop so the training step is traced first as in a real run (AutoGraph shares conversions with
it), then runs the trainer's dev evaluation (`Trainer.evaluate`, exactly what `EvaluateAction`
runs every `train.eval_every` steps) several times. For each it prints the wall time and its
parts (reading the split, dev loss, beam search), the functions traced so far (a later
evaluation must add none) and the share of the main job's 5-minute budget. The first
evaluation carries the once-per-process costs; the main job, whose budget ends before
`train.eval_every`, evaluates dev once. Run it alone:

  .venv/bin/python bench/evaluation.py          # ~1.5 min alone, after `make run`
  .venv/bin/python bench/evaluation.py --evaluations 2 --run_dir runs/main/model
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import yaml  # noqa: E402

from bench import common  # noqa: E402
from pipeline import config as config_lib  # noqa: E402
from pipeline import paths  # noqa: E402
from trainer import distribution, train_loop  # noqa: E402

MAIN_JOB_BUDGET_SECONDS = 300.0
COLUMNS = ["evaluation", "seconds", "read_s", "loss_s", "decode_s", "traced", "budget_%"]


def _parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run_dir",
        default=os.path.join(common.REPO, "runs", "main", "model"),
        help="A trained model_dir (its config.yaml and checkpoints/); only read.",
    )
    parser.add_argument(
        "--data_dir", default=common.DEFAULT_DATA_DIR, help="The run's preprocessed dataset."
    )
    parser.add_argument("--evaluations", type=int, default=3, help="Dev evaluations to time.")
    parser.add_argument(
        "--warm_steps", type=int, default=2, help="Training steps before the first evaluation."
    )
    return parser.parse_args()


def _restored_trainer(run_dir: str, data_dir: str, work: str) -> train_loop.Trainer:
    """The run's config and latest checkpoint in a copy under `work`, with the main job's
    strategy for this host."""
    layout = paths.RunLayout(run_dir)
    if not os.path.exists(os.path.join(layout.checkpoints, "checkpoint")):
        raise SystemExit(
            f"No checkpoint in {layout.checkpoints}: run `make run` first, or pass --run_dir."
        )
    with open(layout.config, encoding="utf-8") as f:
        cfg = config_lib.from_dict(yaml.safe_load(f))
    cfg = config_lib.merge(cfg, {"data": {"data_dir": data_dir}}, where="bench")
    copy = os.path.join(work, "model")
    shutil.copytree(layout.checkpoints, paths.RunLayout(copy).checkpoints)
    strategy = distribution.build_strategy(cfg.runtime, distribution.cpu_replicas(cfg))
    trainer = train_loop.Trainer(cfg, copy, strategy)
    trainer.checkpoints.restore()
    return trainer


def main():
    args = _parse_args()
    common.ensure_dataset(args.data_dir)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-evaluation-") as work:
        trainer = _restored_trainer(args.run_dir, args.data_dir, work)
        started = time.time()
        trainer.runner.run(args.warm_steps)
        print(f"{args.warm_steps} training steps (traced first): {time.time() - started:.1f} s")
        limit = trainer.cfg.train.eval_sentences
        for number in range(1, args.evaluations + 1):
            started = time.time()
            result = trainer.evaluate("dev", limit)
            seconds = time.time() - started
            rows.append(
                {
                    "evaluation": number,
                    "seconds": round(seconds, 1),
                    "read_s": result["read_seconds"],
                    "loss_s": result["loss_seconds"],
                    "decode_s": result["decode_seconds"],
                    "traced": trainer.evaluator.traced_functions(),
                    "budget_%": round(100.0 * seconds / MAIN_JOB_BUDGET_SECONDS, 1),
                    "loss": result["loss"],
                    "bleu": result["bleu"],
                    "loss_pairs": result["loss_pairs"],
                    "sentences": result["sentences"],
                    "replicas": trainer.strategy.num_replicas_in_sync,
                }
            )
    print(
        f"Dev evaluation of {args.run_dir}: loss over {rows[0]['loss_pairs']} pairs, "
        f"beam search of {rows[0]['sentences']} sentences, {rows[0]['replicas']} replica(s)"
    )
    common.print_table(rows, COLUMNS)
    path = common.write_json("evaluation", {"run_dir": args.run_dir, "evaluations": rows})
    print(f"written to {path}")


if __name__ == "__main__":
    main()
