"""Faults in a real two-process cluster started by `launch local`: a preempted (SIGTERM) job
resumes bit-identically; a worker killed with SIGKILL fails the whole job fast, naming the
worker, and the restarted job ends bit-identical to an uninterrupted one."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
import tensorflow as tf

from tests import dataset_fixture

pytestmark = pytest.mark.slow

OVERRIDES = (
    "train.train_steps=10,train.steps_per_loop=1,train.checkpoint_every=3,"
    "train.eval_every=1000,data.batch_size=16,train.sampling_schedule=linear,"
    "train.sampling_probability=0.5,train.sampling_k=20"
)


def _launch_argv(data_dir, model_dir, overrides=OVERRIDES):
    return [
        sys.executable,
        "-m",
        "launch.main",
        "local",
        "--num_workers=2",
        "--experiment=attention_seq2seq/tiny",
        f"--data_dir={data_dir}",
        f"--model_dir={model_dir}",
        f"--params_override={overrides}",
        "--deterministic",
        "--grace_seconds=60",
    ]


def _start(argv):
    return subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=dataset_fixture.REPO,
    )


def _wait_for_step(process, model_dir, step, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if any(h["step"] >= step for h in dataset_fixture.read_history(model_dir)):
            return
        time.sleep(0.05)
    raise AssertionError(f"step {step} never logged; job ended with {process.poll()}")


def _run(argv):
    result = subprocess.run(argv, capture_output=True, text=True, cwd=dataset_fixture.REPO)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]


def _weights(model_dir):
    reader = tf.train.load_checkpoint(os.path.join(model_dir, "checkpoints"))
    names = [n for n in reader.get_variable_to_shape_map() if n.startswith("model/")]
    return {n: reader.get_tensor(n) for n in names}


@pytest.fixture(scope="module")
def reference(small_dataset, tmp_path_factory):
    """An uninterrupted run: its per-step losses and final weights."""
    model_dir = str(tmp_path_factory.mktemp("reference"))
    _run(_launch_argv(small_dataset.root, model_dir))
    return dataset_fixture.read_history(model_dir), _weights(model_dir)


def _assert_identical(model_dir, reference):
    history, weights = reference
    resumed = dataset_fixture.read_history(model_dir)
    assert [h["step"] for h in resumed] == list(range(1, 11))
    assert [h["loss"] for h in resumed] == [h["loss"] for h in history]
    actual = _weights(model_dir)
    assert actual.keys() == weights.keys()
    for name, value in weights.items():
        np.testing.assert_array_equal(actual[name], value, err_msg=name)


def test_sigterm_to_the_cluster_saves_and_resumes_bit_identical(small_dataset, tmp_path, reference):
    resumed_dir = str(tmp_path / "resumed")
    process = _start(_launch_argv(small_dataset.root, resumed_dir))
    _wait_for_step(process, resumed_dir, 4)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 143, output[-4000:]
    assert "[worker 0]" in output and "Stop requested at step" in output
    stopped = dataset_fixture.read_history(resumed_dir)[-1]["step"]
    assert stopped < 10
    _run(_launch_argv(small_dataset.root, resumed_dir))
    _assert_identical(resumed_dir, reference)


def _worker_process(launcher_pid, index):
    for child in psutil.Process(launcher_pid).children(recursive=True):
        try:
            tf_config = json.loads(child.environ().get("TF_CONFIG", "{}"))
        except (psutil.Error, ValueError):
            continue
        if tf_config.get("task", {}).get("index") == index and "trainer.main" in child.cmdline():
            return child
    raise AssertionError(f"worker {index} not found under the launcher")


def test_a_worker_killed_fails_the_job_fast_and_the_restart_is_bit_identical(
    small_dataset, tmp_path, reference
):
    model_dir = str(tmp_path / "run")
    process = _start(_launch_argv(small_dataset.root, model_dir))
    _wait_for_step(process, model_dir, 5)
    _worker_process(process.pid, 1).kill()
    killed_at = time.time()
    output, _ = process.communicate(timeout=90)
    assert time.time() - killed_at < 60
    assert process.returncode != 0
    assert "worker 1 was killed by SIGKILL" in output
    assert dataset_fixture.read_history(model_dir)[-1]["step"] < 10
    _run(_launch_argv(small_dataset.root, model_dir))
    _assert_identical(model_dir, reference)
