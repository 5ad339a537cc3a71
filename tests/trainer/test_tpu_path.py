"""The TPU code path, run on the CPU: bucketed static shapes, XLA once per bucket, the masked loss.

No TPU exists here. What a TPU would run is the same code under `train.jit_compile=true`: the
config as `distribution.resolve` makes it for a TPU, the TPU input (`static_shapes=True`) and the
static-shape loss branch. XLA compilations are counted from TensorFlow's own log
(`TF_CPP_VMODULE=device_compiler=1`), as tests/trainer/test_xla.py does.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import tensorflow as tf

from pipeline import config
from tests import dataset_fixture
from trainer import data, distribution, task

STEPS = 40  # batches inspected
TRAIN_STEPS = 10  # steps trained under XLA; the tiny config's three buckets all come up by then


def _tiny(small_dataset, overrides=""):
    return config.build_config(
        "attention_seq2seq/tiny",
        params_override=f"data.data_dir={small_dataset.root}{',' if overrides else ''}{overrides}",
    )


def test_tpu_input_pads_each_batch_to_its_own_bucket(small_dataset):
    cfg = _tiny(small_dataset)
    boundaries = cfg.data.bucket_boundaries
    dataset = data.make_train_dataset(cfg.data, cfg.train.seed, static_shapes=True)
    assert dataset.element_spec[data.SOURCE_IDS].shape[0] == cfg.data.batch_size
    lengths = []
    for batch in dataset.take(STEPS):
        width = int(batch[data.SOURCE_IDS].shape[1])
        assert int(batch[data.TARGET_IN].shape[1]) == width, "both sides share the bucket"
        longest = int(
            tf.reduce_max(tf.maximum(batch[data.SOURCE_LENGTHS], batch[data.TARGET_LENGTHS]))
        )
        assert width == min(b for b in boundaries if b >= longest), (width, longest)
        lengths.append(width)
    assert set(lengths) - {boundaries[-1]}, f"every batch padded to the last bucket: {lengths}"


def test_tpu_input_keeps_the_per_replica_batch_static(small_dataset):
    cfg = _tiny(small_dataset)
    context = tf.distribute.InputContext(
        num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=4
    )
    dataset = data.make_train_dataset(cfg.data, cfg.train.seed, context, static_shapes=True)
    for key in (data.SOURCE_IDS, data.TARGET_IN, data.TARGET_OUT, data.SOURCE_LENGTHS):
        assert dataset.element_spec[key].shape[0] == cfg.data.batch_size // 4, key


def _loss_ops(cfg):
    """The op types of the loss as traced for a [batch, any length] batch."""
    model = task.build_model(cfg.model, {"vocab": {"source": {"size": 50}, "target": {"size": 60}}})
    translation = task.TranslationTask(cfg, model, optimizer=None)
    ids = tf.TensorSpec([cfg.data.batch_size, None], tf.int32)
    lengths = tf.TensorSpec([cfg.data.batch_size], tf.int32)
    spec = {
        data.SOURCE_IDS: ids,
        data.SOURCE_LENGTHS: lengths,
        data.TARGET_IN: ids,
        data.TARGET_OUT: ids,
        data.TARGET_LENGTHS: lengths,
    }
    loss = tf.function(lambda batch: translation.loss(batch, tf.constant(0, tf.int64), True))
    graph = loss.get_concrete_function(spec).graph
    types = {op.type for op in graph.get_operations()}
    for function in graph.as_graph_def().library.function:
        types |= {node.op for node in function.node_def}
    return types


def test_tpu_config_takes_the_static_shape_loss_branch(small_dataset):
    """Under TPUs the loss masks padding; the CPU default drops it with boolean_mask (`Where`)."""
    cfg = _tiny(small_dataset)
    on_tpu = distribution.resolve(cfg, replicas=8, kind="tpu")
    on_cpu = distribution.resolve(cfg, replicas=1, kind="cpu")
    assert on_tpu.train.jit_compile and on_tpu.model.encoder_lstm == "fused"
    assert "Where" not in _loss_ops(on_tpu)
    assert "Where" in _loss_ops(on_cpu)


_RUN_TPU_PATH = """
import json, sys, tensorflow as tf
from pipeline import config
from trainer import data, distribution, train_loop
data_dir, model_dir, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
cfg = config.build_config("attention_seq2seq/tiny", params_override=f"data.data_dir={data_dir}")
cfg = distribution.resolve(cfg, replicas=1, kind="tpu")  # what a TPU runs: XLA, fused encoder
strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
trainer = train_loop.Trainer(cfg, model_dir, strategy)
losses = [trainer.runner.run(5)["loss_sum"] for _ in range(steps // 5)]
train = data.make_train_dataset(cfg.data, cfg.train.seed, static_shapes=True)
widths = [int(b[data.SOURCE_IDS].shape[1]) for b in train.take(steps)]
print("RESULT " + json.dumps({"widths": widths, "losses": losses, "jit": cfg.train.jit_compile}))
"""


@pytest.mark.slow
def test_tpu_path_compiles_once_per_bucket_used(small_dataset, tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0", "TF_CPP_VMODULE": "device_compiler=1"}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_RUN_TPU_PATH), small_dataset.root, str(tmp_path)]
        + [str(TRAIN_STEPS)],
        capture_output=True,
        text=True,
        env=env,
        cwd=dataset_fixture.REPO,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line[len("RESULT ") :])
    buckets = set(out["widths"])
    assert out["jit"] and len(buckets) >= 2, out["widths"]
    compiles = result.stderr.count("Compilation of XLA executable")
    assert compiles == len(buckets), f"{compiles} XLA compilations for buckets {sorted(buckets)}"
    assert all(loss == loss for loss in out["losses"]), "NaN loss"
