"""The encoder's one switch: Keras' cuDNN-capable LSTM or the fused loop, same weights and maths.

No GPU here: on a CPU Keras runs its generic loop, so these tests check that `layers.KerasLSTM`
computes what `recurrent.FusedLSTM` does from the same variables, under tf.function (graph mode,
where a GPU would swap in cuDNN), and that checkpoints move between the two. Whether cuDNN is
actually picked is checked on a GPU by tests/trainer/test_gpu.py (bench/gpu_check.py runs it).
"""

import numpy as np
import pytest
import tensorflow as tf

from pipeline import config
from trainer import layers, recurrent

BATCH, STEPS, WIDTH, UNITS = 5, 7, 6, 4


def _inputs():
    x = tf.random.stateless_normal([BATCH, STEPS, WIDTH], [1, 2])
    return x, tf.sequence_mask(tf.constant([7, 3, 1, 5, 6]), STEPS)


@tf.function
def _run(layer, x, mask):
    with tf.GradientTape() as tape:
        tape.watch(x)
        outputs, h, c = layer(x, mask)
        weights = tf.random.stateless_normal(tf.shape(outputs), [5, 6])
        loss = tf.reduce_sum(outputs * weights) + tf.reduce_sum(1.3 * h) + tf.reduce_sum(0.7 * c)
    return (outputs, h, c), tape.gradient(loss, [x, *layer.trainable_weights])


@pytest.mark.parametrize("reverse", [False, True])
def test_keras_lstm_matches_the_fused_lstm_outputs_states_and_gradients(reverse):
    x, mask = _inputs()
    keras_lstm = layers.KerasLSTM(UNITS, reverse=reverse)
    fused = recurrent.FusedLSTM(UNITS, reverse=reverse)
    keras_lstm(x, mask)
    fused(x, mask)
    assert len(keras_lstm.trainable_weights) == 3, "Keras' cell holds the layer's own variables"
    for ours, theirs in zip(fused.weights, keras_lstm.weights, strict=True):
        ours.assign(theirs)
    (k_out, k_grads), (f_out, f_grads) = _run(keras_lstm, x, mask), _run(fused, x, mask)
    padding = tf.logical_not(mask)
    assert float(tf.reduce_max(tf.abs(tf.boolean_mask(k_out[0], padding)))) == 0.0
    for name, a, b in zip(["outputs", "h", "c"], k_out, f_out, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6, err_msg=name)
    for name, a, b in zip(["x", "kernel", "recurrent", "bias"], k_grads, f_grads, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, err_msg=name)


def _encoder(encoder_lstm):
    cfg = config.merge(
        config.ModelConfig(embedding_dim=8, units=8, encoder_layers=3),
        {"encoder_lstm": encoder_lstm},
        "test",
    )
    encoder = layers.Encoder(cfg, vocab_size=20)
    ids = tf.constant([[3, 4, 5, 2], [6, 2, 0, 0]])
    lengths = tf.constant([4, 2])
    return encoder, lambda: encoder(ids, lengths, tf.constant([0, 0]))


@pytest.mark.parametrize("saved, restored", [("fused", "keras"), ("keras", "fused")])
def test_checkpoints_move_between_the_two_encoders(saved, restored, tmp_path):
    tf.keras.utils.set_random_seed(3)
    source, run_source = _encoder(saved)
    memory, (h, c) = run_source()
    path = tf.train.Checkpoint(encoder=source).write(str(tmp_path / "ckpt"))
    target, run_target = _encoder(restored)
    run_target()  # builds the variables, which the restore then overwrites
    tf.train.Checkpoint(encoder=target).read(path).assert_existing_objects_matched()
    names = [[v.name.split("/", 1)[1] for v in e.weights] for e in (source, target)]
    assert names[0] == names[1], "same variables, same order (the float32 twin copies by order)"
    restored_memory, (restored_h, restored_c) = run_target()
    np.testing.assert_allclose(restored_memory, memory, atol=1e-6)
    np.testing.assert_allclose(restored_h, h, atol=1e-6)
    np.testing.assert_allclose(restored_c, c, atol=1e-6)


def test_the_switch_picks_the_implementation_and_auto_means_fused_unresolved():
    kinds = {
        choice: {type(layer) for layer in [_encoder(choice)[0].forward_layer]}
        for choice in ("auto", "fused", "keras")
    }
    assert kinds == {
        "auto": {recurrent.FusedLSTM},
        "fused": {recurrent.FusedLSTM},
        "keras": {layers.KerasLSTM},
    }
