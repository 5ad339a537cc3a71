"""Resume cost and exactness on the reference model (`attention_seq2seq/base`, bundled corpus).

Two measurements, each in real `nmt-train` / `nmt-launch local` processes:

startup: time from launching `nmt-train` to its first logged training step, resuming (a) from
  a checkpoint at step `--steps` and (b) from the same checkpoint rewritten to step `--far_step`
  (200,000 by default) with the input position a run would have there, placed at the end of an
  epoch (the most a restart can re-read). Positioning the input no longer replays the batches
  consumed, so (b) should take about as long as (a); before, it re-read every batch (215 s
  against 56 s at step 10 on this machine). `--repeats` alternating runs; medians reported.

kill: a run killed with SIGKILL at a random step and restarted against an uninterrupted run, on
  one process with the default CPU replicas (`--workers 1`) or a `nmt-launch local` cluster
  (`--workers 2`, SIGKILL to a random worker; the launcher then stops the job). Reports whether
  every logged loss and every final weight is bit-identical (runs use `--deterministic`).

  .venv/bin/python bench/resume.py startup [--far_step 200000] [--repeats 2]
  .venv/bin/python bench/resume.py kill --workers 1 [--steps 40] [--seed N]
  .venv/bin/python bench/resume.py kill --workers 2 [--steps 40] [--seed N]
"""

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

EXPERIMENT = "attention_seq2seq/base"
# Evaluation and export are not what is measured: keep them to a sentence.
QUIET = "train.eval_every=1000000000,train.eval_sentences=1,train.eval_loss_sentences=1"


def _history(model_dir: str) -> list[dict]:
    path = os.path.join(model_dir, "train_history.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _train_argv(data_dir, model_dir, overrides, workers=1):
    if workers == 1:
        head = [sys.executable, "-m", "trainer.main", "--noexport", "--noevaluate_test"]
    else:
        head = [sys.executable, "-m", "launch.main", "local", f"--num_workers={workers}"]
        overrides += ",train.test_sentences=1"
    return [
        *head,
        f"--experiment={EXPERIMENT}",
        f"--data_dir={data_dir}",
        f"--model_dir={model_dir}",
        f"--params_override={QUIET},{overrides}",
        "--deterministic",
    ]


def _run(argv):
    result = subprocess.run(argv, capture_output=True, text=True, cwd=common.REPO)
    if result.returncode != 0:
        sys.stderr.write((result.stdout + result.stderr)[-5000:])
        raise SystemExit(f"failed: {' '.join(argv)}")


def _seconds_to_first_step(argv, model_dir, after_step) -> float:
    """Launches `argv` and returns the seconds until it logs a step beyond `after_step`."""
    started = time.perf_counter()
    process = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=common.REPO
    )
    while process.poll() is None:
        if any(h["step"] > after_step for h in _history(model_dir)):
            seconds = time.perf_counter() - started
            process.kill()
            process.wait()
            return seconds
        time.sleep(0.02)
    raise SystemExit(f"never logged a step after {after_step}:\n{process.stderr.read()[-4000:]}")


def _rewrite_checkpoint(data_dir: str, model_dir: str, far_step: int):
    """Moves the latest checkpoint of `model_dir` to `far_step`, with the input where a run
    would be there, at the last pool of an epoch (the longest restart re-read)."""
    import tensorflow as tf

    from pipeline import config, paths
    from trainer import distribution, records, state

    cfg = config.build_config(EXPERIMENT, params_override=f"data.data_dir={data_dir}")
    strategy = tf.distribute.get_strategy()
    # As the trainer resolves it (the precision 'auto' picks), so the checkpoints match.
    run = state.TrainState(distribution.for_strategy(cfg, strategy), model_dir, strategy)
    run.checkpoint.restore(tf.train.latest_checkpoint(run.layout.checkpoints))
    files = records.shard_files(paths.DatasetLayout(data_dir), "train")
    share = sum(1 for _ in tf.data.TFRecordDataset(files))
    pool = cfg.data.batch_size * cfg.data.sort_pool
    epoch = far_step * cfg.data.batch_size // share
    last = far_step - 1
    position = [0, epoch, share - pool, last // cfg.data.sort_pool, last % cfg.data.sort_pool]
    run.optimizer.iterations.assign(far_step)
    rows = run.input_positions.numpy().shape[0]  # one per replica, all of pipeline 0
    run.input_positions.assign(tf.constant([position] * rows, tf.int64))
    manager = tf.train.CheckpointManager(run.checkpoint, run.layout.checkpoints, max_to_keep=3)
    print(f"rewritten to step {far_step}, input position {position}:", manager.save(far_step))


def startup(args, data_dir):
    rows = []
    with tempfile.TemporaryDirectory() as root:
        near, far = os.path.join(root, "near"), os.path.join(root, "far")
        print(f"training {args.steps} steps ...", flush=True)
        _run(_train_argv(data_dir, near, f"train.train_steps={args.steps}"))
        shutil.copytree(near, far)
        _run([sys.executable, __file__, "rewrite", f"--data_dir={data_dir}", f"--far={far}",
              f"--far_step={args.far_step}"])  # fmt: skip
        runs = {"near": [], "far": []}
        for repeat in range(args.repeats):
            for name, model_dir, step in (("near", near, args.steps), ("far", far, args.far_step)):
                keep = _history(model_dir)
                overrides = f"train.train_steps={step + 5},train.steps_per_loop=1"
                argv = _train_argv(data_dir, model_dir, overrides)
                seconds = _seconds_to_first_step(argv, model_dir, step)
                _restore_history(model_dir, keep)
                runs[name].append(round(seconds, 1))
                print(f"repeat {repeat + 1}: resume at step {step}: {seconds:.1f} s", flush=True)
    for name, step in (("near", args.steps), ("far", args.far_step)):
        rows.append(
            {
                "resume_step": step,
                "seconds_to_first_step": statistics.median(runs[name]),
                "runs": runs[name],
            }
        )
    rows.append(
        {
            "resume_step": "difference",
            "seconds_to_first_step": round(
                rows[1]["seconds_to_first_step"] - rows[0]["seconds_to_first_step"], 1
            ),
        }
    )
    common.print_table(rows, ["resume_step", "seconds_to_first_step", "runs"])
    print("written", common.write_json("resume_startup", {"results": rows}))


def _restore_history(model_dir: str, records: list[dict]):
    """Puts a run's history back, so each repeat resumes from the same files."""
    with open(os.path.join(model_dir, "train_history.jsonl"), "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))


def _kill_at(argv, model_dir, step, workers, rng) -> str:
    """Starts `argv`, SIGKILLs it (or a random worker of it) once `step` is logged."""
    import psutil

    process = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=common.REPO
    )
    while process.poll() is None and not any(h["step"] >= step for h in _history(model_dir)):
        time.sleep(0.02)
    if process.poll() is not None:
        raise SystemExit("the run ended before it could be killed: pick more --steps")
    if workers == 1:
        victim = psutil.Process(process.pid)
    else:
        trainers = [
            child
            for child in psutil.Process(process.pid).children(recursive=True)
            if "trainer.main" in child.cmdline()
        ]
        victim = rng.choice(trainers)
    victim.send_signal(signal.SIGKILL)
    process.wait()
    return f"pid {victim.pid} at step {_history(model_dir)[-1]['step']}"


def _weights(model_dir: str) -> dict:
    import tensorflow as tf

    reader = tf.train.load_checkpoint(os.path.join(model_dir, "checkpoints"))
    names = [n for n in reader.get_variable_to_shape_map() if n.startswith("model/")]
    return {n: reader.get_tensor(n) for n in names}


def kill(args, data_dir):
    import numpy as np

    seed = args.seed if args.seed is not None else random.randrange(10**6)
    rng = random.Random(seed)
    kill_step = rng.randrange(2, args.steps - 3)
    overrides = (
        f"train.train_steps={args.steps},train.steps_per_loop=1,"
        f"train.checkpoint_every={args.checkpoint_every}"
    )
    if args.params_override:
        overrides += "," + args.params_override
    with tempfile.TemporaryDirectory() as root:
        reference, resumed = os.path.join(root, "reference"), os.path.join(root, "resumed")
        print(f"seed {seed}: reference run of {args.steps} steps ...", flush=True)
        _run(_train_argv(data_dir, reference, overrides, args.workers))
        argv = _train_argv(data_dir, resumed, overrides, args.workers)
        killed = _kill_at(argv, resumed, kill_step, args.workers, rng)
        print(f"killed {killed}; restarting ...", flush=True)
        _run(argv)
        expected, actual = _history(reference), _history(resumed)
        losses_equal = [h["loss"] for h in expected] == [h["loss"] for h in actual]
        steps_equal = [h["step"] for h in expected] == [h["step"] for h in actual]
        want, got = _weights(reference), _weights(resumed)
        weights_equal = want.keys() == got.keys() and all(
            np.array_equal(want[n], got[n]) for n in want
        )
    row = {
        "workers": args.workers,
        "steps": args.steps,
        "killed": killed,
        "seed": seed,
        "params_override": args.params_override,
        "steps_logged_equal": steps_equal,
        "losses_bit_identical": losses_equal,
        "weights_bit_identical": weights_equal,
    }
    common.print_table([row], list(row))
    print("written", common.write_json(f"resume_kill_{args.workers}w", {"results": [row]}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["startup", "kill", "rewrite"])
    parser.add_argument("--data_dir", default=common.DEFAULT_DATA_DIR)
    parser.add_argument("--steps", type=int, default=None, help="startup: 10; kill: 40.")
    parser.add_argument("--far_step", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, choices=[1, 2])
    parser.add_argument("--checkpoint_every", type=int, default=5)
    parser.add_argument("--seed", type=int, default=None, help="Kill step and victim.")
    parser.add_argument("--params_override", default="", help="Extra overrides (kill).")
    parser.add_argument("--far", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    data_dir = common.ensure_dataset(args.data_dir)
    if args.mode == "rewrite":
        _rewrite_checkpoint(data_dir, args.far, args.far_step)
    elif args.mode == "startup":
        args.steps = args.steps or 10
        startup(args, data_dir)
    else:
        args.steps = args.steps or 40
        kill(args, data_dir)


if __name__ == "__main__":
    main()
