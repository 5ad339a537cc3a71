"""On a host with an NVIDIA GPU: auto trains on it, the encoder runs cuDNN, steps train.

Skipped where TensorFlow sees no GPU (every machine this project is developed on);
`bench/gpu_check.py` runs these on a GPU host. The CPU halves of the same claims are tested in
test_distribution.py, test_encoder_lstm.py and test_float16.py.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from pipeline import config
from trainer import distribution, layers, recurrent, train_loop

pytestmark = pytest.mark.skipif(
    not tf.config.list_physical_devices("GPU"),
    reason="needs a GPU that TensorFlow can use (run bench/gpu_check.py on a GPU host)",
)

RUNTIME_GPU = 2  # Keras' marker for "the cuDNN kernel ran" (keras gru_lstm_utils.RUNTIME_GPU)


def _inputs():
    x = tf.random.stateless_normal([5, 7, 6], [1, 2])
    return x, tf.sequence_mask(tf.constant([7, 3, 1, 5, 6]), 7)


def test_auto_strategy_trains_on_the_gpu_with_the_cudnn_encoder():
    strategy = distribution.build_strategy(config.RuntimeConfig())
    assert distribution.device_kind(strategy) == "gpu"
    resolved = distribution.for_strategy(config.build_config("attention_seq2seq/base"), strategy)
    assert resolved.model.encoder_lstm == "keras"


@pytest.mark.parametrize("go_backwards", [False, True])
def test_keras_lstm_picks_cudnn_for_the_encoders_masks(go_backwards):
    lstm = tf.keras.layers.LSTM(
        8, return_sequences=True, go_backwards=go_backwards, return_runtime=True
    )
    x, mask = _inputs()
    _, runtime = tf.function(lambda x, mask: lstm(x, mask=mask))(x, mask)
    assert int(runtime) == RUNTIME_GPU


def test_cudnn_encoder_layer_matches_the_fused_layer_on_the_gpu():
    tf.config.experimental.enable_tensor_float_32_execution(False)  # compare float32 with float32
    try:
        x, mask = _inputs()
        for reverse in (False, True):
            keras_lstm = layers.KerasLSTM(8, reverse=reverse)
            fused = recurrent.FusedLSTM(8, reverse=reverse)
            keras_lstm(x, mask)
            fused(x, mask)
            for ours, theirs in zip(fused.weights, keras_lstm.weights, strict=True):
                ours.assign(theirs)
            ours = tf.function(lambda x, mask, layer=keras_lstm: layer(x, mask))(x, mask)
            theirs = tf.function(lambda x, mask, layer=fused: layer(x, mask))(x, mask)
            for a, b in zip(ours, theirs, strict=True):
                np.testing.assert_allclose(a, b, atol=1e-5)
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(True)


@pytest.mark.parametrize("precision", ["", "mixed_float16"])
def test_training_steps_run_on_the_gpu(precision, small_dataset, tmp_path):
    overrides = f"data.data_dir={small_dataset.root},train.mixed_precision={precision}"
    cfg = config.build_config("attention_seq2seq/tiny", params_override=overrides)
    strategy = distribution.build_strategy(cfg.runtime, distribution.cpu_replicas(cfg))
    tf.keras.utils.set_random_seed(0)
    try:
        trainer = train_loop.Trainer(cfg, str(tmp_path), strategy)
        losses = []
        for _ in range(6):
            totals = trainer.runner.run(5)
            losses.append(float(totals["loss_sum"] / totals["tokens"]))
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    assert all("GPU" in v.device for v in trainer.model.trainable_variables)
    assert trainer.cfg.model.encoder_lstm == "keras"
    assert all(math.isfinite(loss) for loss in losses) and losses[-1] < losses[0], losses
