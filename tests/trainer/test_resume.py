"""Exact resume: a run killed (SIGKILL) or preempted (SIGTERM) and restarted ends bit-identical
to an uninterrupted run: same per-step losses, same final weights. Real processes, CPU, with
dropout and parallel scheduled sampling on two CPU replicas (every random draw and the sampling
schedule must resume exactly).

The sampling schedule is a function of the checkpointed step, so the step is the only sampling
state: the checkpoint carries no sampling variable, and a restart under another schedule is
refused."""

import os
import shutil
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
    "train.eval_every=1000,train.sampling_mode=parallel,train.sampling_schedule=linear,"
    "train.sampling_probability=0.5,train.sampling_k=20,model.dropout=0.1,runtime.cpu_replicas=2"
)


def _argv(data_dir, model_dir, overrides=OVERRIDES):
    return dataset_fixture.tiny_train_argv(
        data_dir, model_dir, overrides, "--deterministic", "--noexport", "--noevaluate_test"
    )


def _run(data_dir, model_dir, overrides=OVERRIDES, expect_success=True):
    result = subprocess.run(
        _argv(data_dir, model_dir, overrides),
        capture_output=True,
        text=True,
        cwd=dataset_fixture.REPO,
    )
    if expect_success:
        assert result.returncode == 0, result.stderr[-4000:]
    else:
        assert result.returncode != 0, result.stderr[-4000:]
    return result.stderr


def _history_mtime(model_dir):
    path = os.path.join(model_dir, "train_history.jsonl")
    return os.stat(path).st_mtime_ns if os.path.exists(path) else None


def _interrupt(data_dir, model_dir, after_step, sig):
    """Starts training, sends `sig` once this process has logged `after_step`, waits for it to end.

    Records left by an earlier, killed run do not count: a kill can land a few steps late, so the
    old history may already reach `after_step`; only a history this process rewrote (a resume
    truncates it) or began counts."""
    written_before = _history_mtime(model_dir)
    process = subprocess.Popen(
        _argv(data_dir, model_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=dataset_fixture.REPO,
    )
    deadline = time.time() + 600  # a loaded machine can take minutes to start TensorFlow
    while time.time() < deadline and process.poll() is None:
        rewritten = _history_mtime(model_dir) != written_before
        if rewritten and any(
            h["step"] >= after_step for h in dataset_fixture.read_history(model_dir)
        ):
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
def reference_dir(small_dataset, tmp_path_factory):
    """An uninterrupted run's model_dir (not to be written to)."""
    model_dir = str(tmp_path_factory.mktemp("reference"))
    log = _run(small_dataset.root, model_dir)
    assert "with 2 replicas" in log
    history = dataset_fixture.read_history(model_dir)
    assert [h["step"] for h in history] == list(range(1, STEPS + 1))
    probabilities = [h["sampling_probability"] for h in history]
    assert probabilities == pytest.approx([0.5 * min(s / 20, 1.0) for s in range(STEPS)])
    return model_dir


@pytest.fixture(scope="module")
def reference(reference_dir):
    return dataset_fixture.read_history(reference_dir), _final_weights(reference_dir)


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


def test_sigkill_corrupt_checkpoint_sigterm_then_restart_is_bit_identical(
    small_dataset, tmp_path, reference
):
    """One run interrupted three ways: SIGKILL after step 7 (checkpoints 3 and 6 written), then
    the latest checkpoint corrupted (as a kill during its write leaves it), so the restart falls
    back to checkpoint 3 and says so; SIGTERM after step 9 (it saves where it stops and exits
    143); then a run to the end. Any state a resume got wrong carries into the final losses and
    weights."""
    model_dir = str(tmp_path)
    code, _ = _interrupt(small_dataset.root, model_dir, 7, signal.SIGKILL)
    assert code == -signal.SIGKILL
    directory = os.path.join(model_dir, "checkpoints")
    state = tf.train.get_checkpoint_state(directory)
    latest = state.model_checkpoint_path
    assert len(state.all_model_checkpoint_paths) >= 2
    data_file = latest + ".data-00000-of-00001"
    with open(data_file, "r+b") as f:
        f.seek(os.path.getsize(data_file) // 2)
        f.write(b"\xff" * 64)

    code, stderr = _interrupt(small_dataset.root, model_dir, 9, signal.SIGTERM)
    assert f"Checkpoint {latest} cannot be loaded" in stderr
    assert "falling back to the previous one" in stderr
    assert "Resumed from" in stderr
    assert code == 143, stderr[-3000:]
    assert "Stop requested at step" in stderr
    stopped_at = dataset_fixture.read_history(model_dir)[-1]["step"]
    checkpoint = tf.train.latest_checkpoint(directory)
    assert checkpoint.endswith(f"ckpt-{stopped_at}")

    log = _run(small_dataset.root, model_dir)
    assert f"Resumed from {checkpoint} at step {stopped_at}" in log
    _assert_identical(model_dir, reference)


def test_the_step_is_the_sampling_state_and_a_changed_schedule_is_refused(
    small_dataset, reference_dir, tmp_path
):
    reader = tf.train.load_checkpoint(os.path.join(reference_dir, "checkpoints"))
    assert not [name for name in reader.get_variable_to_shape_map() if "sampling" in name]
    model_dir = str(tmp_path / "model")
    shutil.copytree(reference_dir, model_dir)
    changed = OVERRIDES.replace("sampling_k=20", "sampling_k=40").replace(
        "sampling_mode=parallel", "sampling_mode=sequential"
    )
    log = _run(small_dataset.root, model_dir, changed, expect_success=False)
    assert "train.sampling_k: 20.0 -> 40.0" in log and "train.sampling_mode" in log
