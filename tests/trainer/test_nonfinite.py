"""A NaN batch is skipped (or stops the run) and never reaches the weights or a checkpoint; a
skipped step counts once however many replicas saw it."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from pipeline import config
from tests import dataset_fixture
from trainer import actions, train_loop

POISONED_STEP = 3


def _trainer(data_dir, model_dir, nonfinite, strategy=None):
    cfg = config.build_config(
        "attention_seq2seq/tiny",
        params_override=(
            f"data.data_dir={data_dir},train.train_steps=6,train.steps_per_loop=1,"
            f"train.eval_every=1000,train.nonfinite={nonfinite}"
        ),
    )
    trainer = train_loop.Trainer(cfg, model_dir, strategy or tf.distribute.get_strategy())
    original = trainer.task.loss

    def poisoned_loss(batch, step, training):
        loss_sum, tokens, nll = original(batch, step, training)
        poison = tf.where(tf.equal(step, POISONED_STEP), np.nan, 1.0)
        return loss_sum * poison, tokens, nll

    trainer.task.loss = poisoned_loss
    return trainer


def test_nan_step_skips_the_update_exactly_and_is_counted_and_logged(
    small_dataset, tmp_path, caplog
):
    """Trained up to the poisoned step, through it, then to the end: one trainer (and one
    trace) serves the exact-skip check and the count and log of the whole run."""
    trainer = _trainer(small_dataset.root, str(tmp_path), "skip")
    cfg = trainer.cfg
    with caplog.at_level("WARNING"):
        trainer.cfg = config.merge(cfg, {"train": {"train_steps": POISONED_STEP}}, "test")
        trainer.train()
        weights = [v.numpy() for v in trainer.model.trainable_variables]
        trainer.cfg = config.merge(cfg, {"train": {"train_steps": POISONED_STEP + 1}}, "test")
        trainer.train()
        assert trainer.step == POISONED_STEP + 1
        for old, new in zip(weights, trainer.model.trainable_variables, strict=True):
            np.testing.assert_array_equal(old, new.numpy())
        trainer.cfg = cfg
        trainer.train()
    assert trainer.step == 6
    assert float(trainer.nonfinite_steps.numpy()) == 1.0
    assert f"1 step(s) before step {POISONED_STEP + 1} had a NaN/Inf loss" in caplog.text
    assert all(np.isfinite(v.numpy()).all() for v in trainer.model.trainable_variables)


def test_nan_step_stops_the_run_when_configured(small_dataset, tmp_path):
    trainer = _trainer(small_dataset.root, str(tmp_path), "stop")
    with pytest.raises(actions.NonFiniteLossError, match="train.nonfinite=stop"):
        trainer.train()
    assert trainer.step == POISONED_STEP + 1
    assert all(np.isfinite(v.numpy()).all() for v in trainer.model.trainable_variables)


def count_on_two_replicas(data_dir: str, model_dir: str) -> dict:
    """Runs in the child: the poisoned run on two logical CPU devices (MirroredStrategy)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    trainer = _trainer(data_dir, model_dir, "skip", strategy)
    trainer.train()
    return {
        "replicas": strategy.num_replicas_in_sync,
        "step": trainer.step,
        "nonfinite_steps": float(trainer.nonfinite_steps.numpy()),
    }


def test_a_skipped_step_counts_once_on_two_replicas(small_dataset, tmp_path):
    """Each replica flags the step; the count must still be one (it was two, one per replica).
    A child process: logical devices must be set before TensorFlow starts."""
    code = (
        "import json, sys\n"
        "from tests.trainer.test_nonfinite import count_on_two_replicas\n"
        "print('RESULT', json.dumps(count_on_two_replicas(sys.argv[1], sys.argv[2])))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, small_dataset.root, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=dataset_fixture.REPO,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    out = json.loads(next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))[7:])
    assert out == {"replicas": 2, "step": 6, "nonfinite_steps": 1.0}
    assert f"1 step(s) before step {POISONED_STEP + 1} had a NaN/Inf loss" in result.stderr
