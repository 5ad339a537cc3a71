"""Exact resume with parallel scheduled sampling on two CPU replicas (real processes, CPU).

The sampling schedule is a function of the checkpointed step, so the step is the only sampling
state: a run killed with SIGKILL and restarted ends bit-identical to an uninterrupted one, the
checkpoint carries no sampling variable, and a restart under another schedule is refused.
"""

import os
import subprocess
import time

import numpy as np
import pytest
import tensorflow as tf

from tests import dataset_fixture

pytestmark = pytest.mark.slow

STEPS = 10
OVERRIDES = (
    f"train.train_steps={STEPS},train.steps_per_loop=1,train.checkpoint_every=3,"
    "train.eval_every=1000,train.sampling_mode=parallel,train.sampling_schedule=linear,"
    "train.sampling_probability=0.5,train.sampling_k=10,runtime.cpu_replicas=2"
)


def _argv(data_dir, model_dir, overrides=OVERRIDES):
    return dataset_fixture.tiny_train_argv(
        data_dir, model_dir, overrides, "--deterministic", "--noexport", "--noevaluate_test"
    )


def _run(data_dir, model_dir, overrides=OVERRIDES):
    result = subprocess.run(
        _argv(data_dir, model_dir, overrides),
        capture_output=True,
        text=True,
        cwd=dataset_fixture.REPO,
    )
    return result.returncode, result.stderr


def _kill_after(data_dir, model_dir, step):
    process = subprocess.Popen(
        _argv(data_dir, model_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=dataset_fixture.REPO,
    )
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if any(h["step"] >= step for h in dataset_fixture.read_history(model_dir)):
            break
        time.sleep(0.05)
    assert process.poll() is None, "training finished before it could be killed"
    process.kill()
    process.wait(timeout=60)


def _checkpoint(model_dir):
    reader = tf.train.load_checkpoint(os.path.join(model_dir, "checkpoints"))
    return {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()}


def test_parallel_sampling_on_two_replicas_resumes_bit_identically(small_dataset, tmp_path):
    data_dir = small_dataset.root
    reference_dir, resumed_dir = str(tmp_path / "reference"), str(tmp_path / "resumed")
    code, log = _run(data_dir, reference_dir)
    assert code == 0, log[-4000:]
    assert "with 2 replicas" in log
    reference = dataset_fixture.read_history(reference_dir)
    probabilities = [h["sampling_probability"] for h in reference]
    assert probabilities == pytest.approx([0.5 * min(s / 10, 1.0) for s in range(STEPS)])

    _kill_after(data_dir, resumed_dir, 5)
    code, log = _run(data_dir, resumed_dir)
    assert code == 0, log[-4000:]
    assert "Resumed from" in log
    resumed = dataset_fixture.read_history(resumed_dir)
    for key in ("step", "loss", "sampling_probability"):
        assert [h[key] for h in resumed] == [h[key] for h in reference], key

    weights, expected = _checkpoint(resumed_dir), _checkpoint(reference_dir)
    assert weights.keys() == expected.keys()
    assert not any("sampling" in name for name in weights)
    for name, value in expected.items():
        if name.startswith("model/"):
            np.testing.assert_array_equal(weights[name], value, err_msg=name)

    changed = (
        OVERRIDES.replace("sampling_k=10", "sampling_k=20") + ",train.sampling_mode=sequential"
    )
    code, log = _run(data_dir, resumed_dir, changed)
    assert code != 0
    assert "train.sampling_k: 10.0 -> 20.0" in log and "train.sampling_mode" in log
