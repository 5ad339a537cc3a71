"""Exact resume: a run killed (SIGKILL) or preempted (SIGTERM) and restarted ends bit-identical
to an uninterrupted run: same per-step losses, same final weights. Real processes, CPU."""

import os
import signal
import subprocess
import time

import numpy as np
import pytest
import tensorflow as tf

from tests import dataset_fixture

pytestmark = pytest.mark.slow

STEPS = 14
OVERRIDES = (
    f"train.train_steps={STEPS},train.steps_per_loop=1,train.checkpoint_every=3,"
    "train.eval_every=1000,train.sampling_schedule=linear,train.sampling_probability=0.5,"
    "train.sampling_k=20,model.dropout=0.1"
)


def _argv(data_dir, model_dir):
    return dataset_fixture.tiny_train_argv(
        data_dir, model_dir, OVERRIDES, "--deterministic", "--noexport", "--noevaluate_test"
    )


def _run(data_dir, model_dir):
    result = subprocess.run(
        _argv(data_dir, model_dir), capture_output=True, text=True, cwd=dataset_fixture.REPO
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stderr


def _interrupt(data_dir, model_dir, after_step, sig):
    """Starts training, sends `sig` once `after_step` is logged, waits for the process to end."""
    process = subprocess.Popen(
        _argv(data_dir, model_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=dataset_fixture.REPO,
    )
    deadline = time.time() + 600  # a loaded machine can take minutes to start TensorFlow
    while time.time() < deadline and process.poll() is None:
        if any(h["step"] >= after_step for h in dataset_fixture.read_history(model_dir)):
            break
        time.sleep(0.05)
    assert process.poll() is None, "training finished before it could be interrupted"
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=120)
    return process.returncode, stderr


def _final_weights(model_dir):
    reader = tf.train.load_checkpoint(os.path.join(model_dir, "checkpoints"))
    names = [n for n in reader.get_variable_to_shape_map() if n.startswith("model/")]
    assert names
    return {n: reader.get_tensor(n) for n in names}


@pytest.fixture(scope="module")
def reference(small_dataset, tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("reference"))
    _run(small_dataset.root, model_dir)
    history = dataset_fixture.read_history(model_dir)
    assert [h["step"] for h in history] == list(range(1, STEPS + 1))
    probabilities = [h["sampling_probability"] for h in history]
    assert all(0.0 < p < 1.0 for p in probabilities[1:]), probabilities
    return history, _final_weights(model_dir)


def _assert_identical(model_dir, reference):
    history, weights = reference
    resumed = dataset_fixture.read_history(model_dir)
    assert [h["step"] for h in resumed] == [h["step"] for h in history]
    assert [h["loss"] for h in resumed] == [h["loss"] for h in history]
    assert [h["sampling_probability"] for h in resumed] == [
        h["sampling_probability"] for h in history
    ]
    final = _final_weights(model_dir)
    assert final.keys() == weights.keys()
    for name, value in weights.items():
        np.testing.assert_array_equal(final[name], value, err_msg=name)


def test_sigkill_then_sigterm_then_restart_is_bit_identical(small_dataset, tmp_path, reference):
    """One run interrupted twice: SIGKILL after step 4 (it resumes from its first checkpoint),
    then SIGTERM after step 9 (it saves where it stops and exits 143), then run to the end. Any
    state either resume got wrong would carry into the final losses and weights. A SIGKILL with
    two checkpoints written is the corrupt-checkpoint test's."""
    model_dir = str(tmp_path)
    code, _ = _interrupt(small_dataset.root, model_dir, 4, signal.SIGKILL)
    assert code == -signal.SIGKILL

    code, stderr = _interrupt(small_dataset.root, model_dir, 9, signal.SIGTERM)
    assert "Resumed from" in stderr
    assert code == 143, stderr[-3000:]
    assert "Stop requested at step" in stderr
    stopped_at = dataset_fixture.read_history(model_dir)[-1]["step"]
    checkpoint = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    assert checkpoint.endswith(f"ckpt-{stopped_at}")

    log = _run(small_dataset.root, model_dir)
    assert f"Resumed from {checkpoint} at step {stopped_at}" in log
    _assert_identical(model_dir, reference)


def test_corrupt_latest_checkpoint_falls_back_to_previous(small_dataset, tmp_path, reference):
    model_dir = str(tmp_path)
    code, _ = _interrupt(small_dataset.root, model_dir, 8, signal.SIGKILL)
    assert code == -signal.SIGKILL
    directory = os.path.join(model_dir, "checkpoints")
    state = tf.train.get_checkpoint_state(directory)
    latest = state.model_checkpoint_path
    assert len(state.all_model_checkpoint_paths) >= 2
    data_file = latest + ".data-00000-of-00001"
    with open(data_file, "r+b") as f:
        f.seek(os.path.getsize(data_file) // 2)
        f.write(b"\xff" * 64)
    log = _run(small_dataset.root, model_dir)
    assert f"Checkpoint {latest} cannot be loaded" in log
    assert "falling back to the previous one" in log
    assert "Resumed from" in log
    _assert_identical(model_dir, reference)
