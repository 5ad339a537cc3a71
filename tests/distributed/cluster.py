"""The two-worker `launch local` job the distributed tests run, and how they run it."""

import subprocess
import sys

from tests import dataset_fixture

# Scheduled sampling on a linear schedule makes the sampling step part of what a resume must
# restore exactly; test batches of 8 make the 39 test sentences 5 batches, so decoding takes
# rounds over both workers and a last round where one worker's batch is a stand-in.
OVERRIDES = (
    "train.train_steps=10,train.steps_per_loop=1,train.checkpoint_every=3,"
    "train.eval_every=1000,data.batch_size=16,data.eval_batch_size=8,"
    "train.sampling_schedule=linear,train.sampling_probability=0.5,train.sampling_k=20"
)
TRAIN_STEPS = 10


def launch_argv(data_dir: str, model_dir: str) -> list[str]:
    """`launch local` with two workers on the tiny config and the overrides above."""
    return [
        sys.executable,
        "-m",
        "launch.main",
        "local",
        "--num_workers=2",
        "--experiment=attention_seq2seq/tiny",
        f"--data_dir={data_dir}",
        f"--model_dir={model_dir}",
        f"--params_override={OVERRIDES}",
        "--deterministic",
        "--grace_seconds=60",
    ]


def run(argv: list[str]) -> str:
    """Runs `argv` to the end from the repository; returns its stdout and stderr."""
    result = subprocess.run(
        argv, capture_output=True, text=True, cwd=dataset_fixture.REPO, timeout=900
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    return result.stdout + result.stderr
