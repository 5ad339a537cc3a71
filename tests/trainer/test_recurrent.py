"""The fused LSTM against Keras' own LSTM: same outputs, final state and gradients."""

import numpy as np
import pytest
import tensorflow as tf

from tests.trainer.lstm_fixture import accumulating_bias
from trainer import layers, recurrent

BATCH, STEPS, WIDTH, UNITS = 5, 7, 6, 4


def _inputs(dtype=tf.float32):
    x = tf.random.stateless_normal([BATCH, STEPS, WIDTH], [1, 2])
    lengths = tf.constant([7, 3, 1, 5, 6])
    return tf.cast(x, dtype), lengths, tf.sequence_mask(lengths, STEPS)


def _reference(fused, reverse):
    """A Keras RNN(LSTMCell) holding the fused layer's weights, outputs in input order."""
    cell = tf.keras.layers.LSTMCell(UNITS)
    rnn = tf.keras.layers.RNN(cell, return_sequences=True, return_state=True, go_backwards=reverse)
    x, _, mask = _inputs()
    rnn(x, mask=mask)
    for ours, theirs in zip(
        fused.weights, (cell.kernel, cell.recurrent_kernel, cell.bias), strict=True
    ):
        theirs.assign(ours)

    def run(x, mask):
        outputs, h, c = rnn(x, mask=mask)
        return (tf.reverse(outputs, [1]) if reverse else outputs), h, c

    return run, cell


def _loss(outputs, h, c, mask, weights):
    """Weighs every real output and both final states differently, so all gradients matter."""
    real = tf.cast(mask, outputs.dtype)[:, :, None]
    return tf.reduce_sum(outputs * weights * real) + tf.reduce_sum(1.3 * h) + tf.reduce_sum(0.7 * c)


CONTEXTS = {
    "eager": lambda fn: fn,
    "function": tf.function,
    "xla": lambda fn: tf.function(fn, jit_compile=True),
}


def _forward_and_grads(layer, weights, x, mask, context="eager"):
    """(outputs, h, c) and the gradients of `_loss` for x and `weights`, in `context`."""

    loss_weights = tf.random.stateless_normal([BATCH, STEPS, UNITS], [5, 6])  # outside XLA

    def run(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            outputs = layer(x, mask)
            loss = _loss(*(tf.cast(o, tf.float32) for o in outputs), mask, loss_weights)
        return outputs, tape.gradient(loss, [x, *weights])

    return CONTEXTS[context](run)(x)


@pytest.mark.parametrize("context", CONTEXTS)
@pytest.mark.parametrize("reverse", [False, True])
def test_fused_lstm_matches_keras_outputs_states_and_gradients(reverse, context):
    """Ours eagerly, in a tf.function (where training runs) and under XLA; Keras eagerly."""
    tf.keras.utils.set_random_seed(0)
    x, _, mask = _inputs()
    fused = recurrent.FusedLSTM(UNITS, reverse=reverse)
    fused(x, mask)
    reference, cell = _reference(fused, reverse)
    ours, our_grads = _forward_and_grads(fused, fused.weights, x, mask, context)
    keras_weights = [cell.kernel, cell.recurrent_kernel, cell.bias]
    theirs, their_grads = _forward_and_grads(reference, keras_weights, x, mask)
    real = tf.cast(mask, tf.float32)[:, :, None]
    np.testing.assert_allclose(ours[0] * real, theirs[0] * real, atol=1e-6)
    np.testing.assert_allclose(ours[1], theirs[1], atol=1e-6)
    np.testing.assert_allclose(ours[2], theirs[2], atol=1e-6)
    for name, a, b in zip(
        ["x", "kernel", "recurrent", "bias"], our_grads, their_grads, strict=True
    ):
        np.testing.assert_allclose(a, b, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("policy, tolerance", [("mixed_float16", 0.005), ("mixed_bfloat16", 0.03)])
def test_fused_lstm_in_reduced_precision_matches_float32(policy, tolerance):
    """Outputs, states and gradients inside a tf.function, within `tolerance` of each one's
    largest float32 element."""
    tf.keras.utils.set_random_seed(2)
    x, _, mask = _inputs()
    full = recurrent.FusedLSTM(UNITS)
    full(x, mask)
    low = recurrent.FusedLSTM(UNITS, dtype=policy)
    low(x, mask)
    for ours, theirs in zip(low.weights, full.weights, strict=True):
        ours.assign(theirs)
    theirs, their_grads = _forward_and_grads(full, full.weights, x, mask, "function")
    ours, our_grads = _forward_and_grads(low, low.weights, x, mask, "function")
    assert ours[0].dtype == low.compute_dtype != "float32"
    assert all(g.dtype == tf.float32 for g in our_grads[1:])
    pairs = list(zip(["outputs", "h", "c"], ours, theirs, strict=True))
    pairs += zip(["x", "kernel", "recurrent", "bias"], our_grads, their_grads, strict=True)
    for name, a, b in pairs:
        scale = float(tf.reduce_max(tf.abs(b)))
        np.testing.assert_allclose(
            tf.cast(a, tf.float32) / scale, b / scale, atol=tolerance, err_msg=name
        )


def test_fused_lstm_outputs_zeros_on_padding_and_ignores_its_values():
    tf.keras.utils.set_random_seed(1)
    x, lengths, mask = _inputs()
    fused = recurrent.FusedLSTM(UNITS)
    outputs, h, c = fused(x, mask)
    padding = tf.logical_not(mask)
    assert float(tf.reduce_max(tf.abs(tf.boolean_mask(outputs, padding)))) == 0.0
    noisy = tf.where(padding[:, :, None], 1e3 * tf.ones_like(x), x)
    noisy_outputs, noisy_h, noisy_c = fused(noisy, mask)
    np.testing.assert_array_equal(noisy_outputs, outputs)
    np.testing.assert_array_equal(noisy_h, h)
    np.testing.assert_array_equal(noisy_c, c)


def test_layer_norm_cells_keep_the_sequence_interface():
    x, _, mask = _inputs()
    for reverse in (False, True):
        layer = layers.build_sequence_lstm(UNITS, layer_norm=True, name="ln", reverse=reverse)
        outputs, h, _ = layer(x, mask)
        assert outputs.shape == (BATCH, STEPS, UNITS)
        # The state is the output at the last real step of the run's direction.
        last = 0 if reverse else 6
        np.testing.assert_allclose(outputs[0, last], h[0], atol=1e-6)


def test_mixed_precision_keeps_cell_state_and_bias_gradient_in_float32():
    steps, step = 300, 0.003
    x = tf.random.stateless_normal([BATCH, steps, WIDTH], [3, 4])
    lengths = tf.constant([300, 250, 120, 300, 7])
    mask = tf.sequence_mask(lengths, steps)
    mixed = recurrent.FusedLSTM(UNITS, dtype="mixed_bfloat16")
    mixed(x, mask)
    mixed.kernel.assign(tf.zeros_like(mixed.kernel))
    mixed.recurrent_kernel.assign(tf.zeros_like(mixed.recurrent_kernel))
    mixed.bias.assign(accumulating_bias(UNITS, step))
    with tf.GradientTape() as tape:
        outputs, _, c = mixed(x, mask)
        loss = tf.reduce_sum(tf.cast(c, tf.float32))
    real_steps = tf.cast(lengths, tf.float32)
    np.testing.assert_allclose(tf.cast(c[:, 0], tf.float32), step * real_steps, rtol=0.01)
    expected = np.tanh(step * np.arange(1, steps + 1))
    np.testing.assert_allclose(tf.cast(outputs[0, :, 0], tf.float32), expected, atol=0.005)
    # d loss / d g-bias: each real step adds i * (1 - g^2) to every unit of every row.
    d_bias = tape.gradient(loss, mixed.bias)
    assert d_bias.dtype == tf.float32
    expected_g = float(tf.reduce_sum(real_steps)) * (1 - step**2)
    np.testing.assert_allclose(d_bias[2 * UNITS : 3 * UNITS], expected_g, rtol=1e-3)
