"""Input work per worker: training records each worker parses per step, at 1, 2 and 4 workers.

Runs a real `nmt-launch local` job (MultiWorkerMirroredStrategy, one process per worker) on the
bundled corpus for each worker count, with the reference data config (`attention_seq2seq/base`:
global batch 64, pools of 32 batches), then reads the input positions the chief saved in its
last checkpoint. Each worker's input pipeline parses its own records in one order, so the record
index at which its current pool starts is the number of records it has parsed to make every
earlier pool. Training runs `--pools` pools plus one step, so that index counts exactly the
records behind `--pools` x 32 steps. Expect about 64/N per worker per step (plus pairs too long
for `data.max_length`, which are parsed and dropped); before input sharding every worker parsed
all 64. This is a count, not a timing: it does not depend on machine load.

The model is shrunk by default (`--model_override`; the count does not depend on it) so the
three jobs take minutes, not tens of minutes:

  .venv/bin/python bench/input.py [--workers 1,2,4] [--pools 2] [--model_override ""]
"""

import argparse
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

POOL_BATCHES = 32  # data.sort_pool of the reference config
GLOBAL_BATCH = 64  # data.batch_size of the reference config
POSITIONS_KEY = "input_positions/.ATTRIBUTES/VARIABLE_VALUE"


def run_job(data_dir: str, model_dir: str, workers: int, steps: int, model_override: str):
    overrides = (
        f"train.train_steps={steps},train.checkpoint_every={steps},train.eval_every={10**9},"
        "train.eval_sentences=1,train.eval_loss_sentences=1,train.test_sentences=1"
    )
    if model_override:
        overrides += "," + model_override
    argv = [
        sys.executable,
        "-m",
        "launch.main",
        "local",
        f"--num_workers={workers}",
        "--experiment=attention_seq2seq/base",
        f"--data_dir={data_dir}",
        f"--model_dir={model_dir}",
        f"--params_override={overrides}",
    ]
    result = subprocess.run(argv, capture_output=True, text=True, cwd=common.REPO)
    if result.returncode != 0:
        sys.stderr.write((result.stdout + result.stderr)[-5000:])
        raise SystemExit(f"the {workers}-worker job failed")


def records_per_worker(model_dir: str, steps_before_pool: int) -> list[float]:
    """Records each worker parsed per step, from the chief's last checkpoint."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(os.path.join(model_dir, "checkpoints"))
    table = reader.get_tensor(POSITIONS_KEY)  # [replicas, (pipeline, epoch, record, ...)]
    by_pipeline = {int(row[0]): row for row in table}
    per_step = []
    for pipeline in sorted(by_pipeline):
        _, epoch, record, _, batch = (int(v) for v in by_pipeline[pipeline])
        if epoch != 0 or batch != 0:
            raise SystemExit(
                f"pipeline {pipeline} is at epoch {epoch}, batch {batch}: use fewer pools"
            )
        per_step.append(record / steps_before_pool)
    return per_step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=common.DEFAULT_DATA_DIR)
    parser.add_argument("--workers", default="1,2,4", help="Comma-separated worker counts.")
    parser.add_argument("--pools", type=int, default=2, help="Sort pools to train through.")
    parser.add_argument(
        "--model_override",
        default="model.embedding_dim=32,model.units=32",
        help="Overrides shrinking the model (the count does not depend on it); '' for base.",
    )
    args = parser.parse_args()
    data_dir = common.ensure_dataset(args.data_dir)
    steps_before_pool = args.pools * POOL_BATCHES
    rows = []
    for workers in (int(w) for w in args.workers.split(",") if w):
        print(f"running {workers} worker(s) for {steps_before_pool + 1} steps ...", flush=True)
        with tempfile.TemporaryDirectory() as model_dir:
            run_job(data_dir, model_dir, workers, steps_before_pool + 1, args.model_override)
            per_step = records_per_worker(model_dir, steps_before_pool)
        rows.append(
            {
                "workers": workers,
                "global_batch": GLOBAL_BATCH,
                "records_per_worker_per_step": [round(r, 2) for r in per_step],
                "share_of_global_batch": [round(r / GLOBAL_BATCH, 3) for r in per_step],
                "before_sharding": GLOBAL_BATCH,
            }
        )
        print(rows[-1], flush=True)
    print()
    common.print_table(
        rows,
        [
            "workers",
            "global_batch",
            "records_per_worker_per_step",
            "share_of_global_batch",
            "before_sharding",
        ],
    )
    path = common.write_json(
        "input",
        {
            "steps_counted": steps_before_pool,
            "model_override": args.model_override,
            "results": rows,
        },
    )
    print("written", path)


if __name__ == "__main__":
    main()
