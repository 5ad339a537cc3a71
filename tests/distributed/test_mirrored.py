"""Replica maths on two logical CPU devices under MirroredStrategy: per-replica batches, loss
scaled by the global batch, clipping after the cross-replica sum. One step on two replicas must
equal one step on one device; beam search and the dev loss spread over the two replicas must
translate and score exactly as one device does, and evaluating again must trace nothing. Runs
in a child process: logical devices must be configured before TensorFlow starts, and the test
process has started it already."""

import json
import subprocess
import sys

import pytest

from tests import dataset_fixture

pytestmark = pytest.mark.slow


def compare_one_step(data_dir: str) -> dict:
    """Runs in the child: one clipped step on 1 device and on 2 replicas from equal weights."""
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from pipeline import config
    from trainer import train_loop

    cfg = config.build_config(
        "attention_seq2seq/tiny",
        params_override=(
            f"data.data_dir={data_dir},train.clip_norm=0.05,data.batch_size=16,"
            "data.eval_batch_size=8"  # 5 test batches: a round of 2 and a last batch alone
        ),
    )
    runs = {}
    for name, strategy in (
        ("one", tf.distribute.OneDeviceStrategy("/cpu:0")),
        ("two", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])),
    ):
        trainer = train_loop.Trainer(cfg, f"/tmp/mirrored-{name}", strategy)
        # Plain SGD makes the update linear in the gradient, so clipping each replica before
        # the sum (the bug this guards against) would visibly change the step; Adam would not.
        with strategy.scope():
            sgd = tf.keras.mixed_precision.LossScaleOptimizer(
                tf.keras.optimizers.SGD(1.0), initial_scale=1.0
            )
            sgd.build(trainer.model.trainable_variables)
        trainer.state.optimizer = trainer.task.optimizer = sgd
        if name == "two":
            for target, source in zip(trainer.model.variables, runs["one"]["initial"], strict=True):
                target.assign(source)
        initial = [v.numpy() for v in trainer.model.variables]
        batch = next(iter(trainer.runner.distributed_dataset()))
        per_replica = [
            int(t.shape[0]) for t in strategy.experimental_local_results(batch["source_ids"])
        ]
        totals = trainer.runner.run(1)
        runs[name] = {
            "initial": initial,
            "final": [v.numpy() for v in trainer.model.variables],
            "per_replica": per_replica,
            "loss_sum": float(totals["loss_sum"]),
            "grad_norm": float(totals["grad_norm"]),
            "trainer": trainer,
        }
    one, two = runs["one"], runs["two"]
    # Decoding: the same weights, one device against batches spread over two replicas. Large
    # random weights make every sentence translate differently, so a hypothesis put in the
    # wrong place shows (an untrained model says the same thing for every sentence).
    rng = np.random.default_rng(0)
    pairs = zip(one["trainer"].model.variables, two["trainer"].model.variables, strict=True)
    for variables in pairs:
        value = rng.normal(0.0, 0.5, variables[0].shape)
        for variable in variables:
            variable.assign(value.astype(variable.dtype.as_numpy_dtype))
    translations = [run["trainer"].evaluator.translate_split("test")[1] for run in (one, two)]
    # 40 dev pairs in batches of 8: two rounds of two, then one batch and a filler.
    dev_losses = [run["trainer"].evaluator.loss("dev") for run in (one, two)]
    evaluator = two["trainer"].evaluator
    traces = [evaluator.traced_functions()]
    evaluator.loss("dev")
    evaluator.translate_split("test")
    traces.append(evaluator.traced_functions())
    diffs = [float(np.max(np.abs(a - b))) for a, b in zip(one["final"], two["final"], strict=True)]
    moved = [
        float(np.max(np.abs(a - b))) for a, b in zip(one["final"], one["initial"], strict=True)
    ]
    return {
        "per_replica": [one["per_replica"], two["per_replica"]],
        "loss_sum": [one["loss_sum"], two["loss_sum"]],
        "grad_norm": [one["grad_norm"], two["grad_norm"]],
        "max_weight_diff": max(diffs),
        "max_weight_move": max(moved),
        "decode_replicas": [one["trainer"].evaluator.replicas, two["trainer"].evaluator.replicas],
        "translations": translations,
        "dev_loss": [result["loss"] for result in dev_losses],
        "dev_loss_pairs": [result["loss_pairs"] for result in dev_losses],
        "traces": traces,
    }


def test_two_replicas_take_the_same_clipped_step_as_one_device(small_dataset):
    code = (
        "import json, sys\n"
        "from tests.distributed.test_mirrored import compare_one_step\n"
        "print('RESULT', json.dumps(compare_one_step(sys.argv[1])))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, small_dataset.root],
        capture_output=True,
        text=True,
        cwd=dataset_fixture.REPO,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line[len("RESULT ") :])
    assert out["per_replica"] == [[16], [8, 8]]
    one_loss, two_loss = out["loss_sum"]
    assert two_loss == pytest.approx(one_loss, rel=1e-5)
    one_norm, two_norm = out["grad_norm"]
    assert two_norm == pytest.approx(one_norm, rel=1e-4)
    assert one_norm > 0.05 * 10, "clipping must be active for this test to mean anything"
    assert out["max_weight_move"] > 1e-4
    assert out["max_weight_diff"] < 1e-6
    assert out["decode_replicas"] == [1, 2]
    one_device, two_replicas = out["translations"]
    assert len(one_device) > 30 and len(set(one_device)) == len(one_device)
    assert two_replicas == one_device
    one_loss, two_loss = out["dev_loss"]
    assert two_loss == pytest.approx(one_loss, rel=1e-6)
    assert out["dev_loss_pairs"] == [40, 40]
    assert out["traces"] == [2, 2], "one loss round and one decode round, traced once each"
