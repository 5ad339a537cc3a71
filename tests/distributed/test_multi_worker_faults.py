"""Faults in a real two-process cluster started by `launch local`: a preempted (SIGTERM) job
saves and resumes; a worker killed with SIGKILL fails the whole job fast, naming the worker;
and the job restarted after both ends bit-identical to an uninterrupted one."""

import contextlib
import json
import os
import signal
import subprocess
import time

import numpy as np
import psutil
import pytest
import tensorflow as tf

from tests import dataset_fixture
from tests.distributed import cluster

pytestmark = pytest.mark.slow


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


def _weights(model_dir):
    reader = tf.train.load_checkpoint(os.path.join(model_dir, "checkpoints"))
    names = [n for n in reader.get_variable_to_shape_map() if n.startswith("model/")]
    return {n: reader.get_tensor(n) for n in names}


@pytest.fixture(scope="module")
def reference(cluster_run):
    """The uninterrupted run (shared with test_multi_worker): per-step losses, final weights."""
    model_dir, _ = cluster_run
    return dataset_fixture.read_history(model_dir), _weights(model_dir)


def _assert_identical(model_dir, reference):
    history, weights = reference
    resumed = dataset_fixture.read_history(model_dir)
    assert [h["step"] for h in resumed] == list(range(1, cluster.TRAIN_STEPS + 1))
    assert [h["loss"] for h in resumed] == [h["loss"] for h in history]
    actual = _weights(model_dir)
    assert actual.keys() == weights.keys()
    for name, value in weights.items():
        np.testing.assert_array_equal(actual[name], value, err_msg=name)


def _worker_process(launcher_pid, index):
    for child in psutil.Process(launcher_pid).children(recursive=True):
        try:
            tf_config = json.loads(child.environ().get("TF_CONFIG", "{}"))
        except (psutil.Error, ValueError):
            continue
        if tf_config.get("task", {}).get("index") == index and "trainer.main" in child.cmdline():
            return child
    raise AssertionError(f"worker {index} not found under the launcher")


@contextlib.contextmanager
def _paused(processes):
    """Stops `processes` (SIGSTOP) for the block, so that a signal sent meanwhile lands at a known
    step whatever the machine's load; SIGCONT after."""
    for process in processes:
        process.suspend()
    try:
        yield
    finally:
        for process in processes:
            process.resume()


def test_sigterm_then_a_killed_worker_then_restart_ends_bit_identical(
    small_dataset, tmp_path, reference
):
    """One job interrupted twice, each interruption checked as it happens: SIGTERM to the
    cluster (it saves where it stops and exits 143), then, in the resumed job, a worker killed
    with SIGKILL (the job fails fast, naming it), then a restart to the end. State lost or
    misplaced by either resume would carry into the final losses and weights.

    The workers are paused while the launcher forwards the SIGTERM (a tiny-config step takes
    ~50 ms, less than the launcher's poll), so the stop lands a step or two later on any load."""
    model_dir = str(tmp_path / "run")
    process = _start(cluster.launch_argv(small_dataset.root, model_dir))
    _wait_for_step(process, model_dir, 1)
    workers = [_worker_process(process.pid, 0), _worker_process(process.pid, 1)]
    _wait_for_step(process, model_dir, 2)
    with _paused(workers):
        process.send_signal(signal.SIGTERM)
        time.sleep(1.0)  # the launcher polls every 0.1 s and forwards to both workers
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 143, output[-4000:]
    assert "[worker 0]" in output and "Stop requested at step" in output
    stopped = dataset_fixture.read_history(model_dir)[-1]["step"]
    assert stopped <= cluster.TRAIN_STEPS - 3, "no steps left to kill a worker in"
    checkpoint = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    assert checkpoint.endswith(f"ckpt-{stopped}")

    process = _start(cluster.launch_argv(small_dataset.root, model_dir))
    _wait_for_step(process, model_dir, stopped + 1)
    _worker_process(process.pid, 1).kill()
    killed_at = time.time()
    output, _ = process.communicate(timeout=90)
    assert time.time() - killed_at < 60
    assert process.returncode != 0
    assert f"Resumed from {checkpoint} at step {stopped}" in output
    assert "worker 1 was killed by SIGKILL" in output
    assert dataset_fixture.read_history(model_dir)[-1]["step"] < cluster.TRAIN_STEPS

    cluster.run(cluster.launch_argv(small_dataset.root, model_dir))
    _assert_identical(model_dir, reference)
