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


def _loss(outputs, h, c, mask):
    """Weighs every real output and both final states differently, so all gradients matter."""
    weights = tf.random.stateless_normal(outputs.shape, [5, 6])
    real = tf.cast(mask, outputs.dtype)[:, :, None]
    return tf.reduce_sum(outputs * weights * real) + tf.reduce_sum(1.3 * h) + tf.reduce_sum(0.7 * c)


@pytest.mark.parametrize("reverse", [False, True])
def test_fused_lstm_matches_keras_outputs_states_and_gradients(reverse):
    tf.keras.utils.set_random_seed(0)
    x, _, mask = _inputs()
    fused = recurrent.FusedLSTM(UNITS, reverse=reverse)
    fused(x, mask)
    reference, cell = _reference(fused, reverse)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        ours = fused(x, mask)
        theirs = reference(x, mask)
        our_loss, their_loss = _loss(*ours, mask), _loss(*theirs, mask)
    real = tf.cast(mask, tf.float32)[:, :, None]
    np.testing.assert_allclose(ours[0] * real, theirs[0] * real, atol=1e-6)
    np.testing.assert_allclose(ours[1], theirs[1], atol=1e-6)
    np.testing.assert_allclose(ours[2], theirs[2], atol=1e-6)
    our_grads = tape.gradient(our_loss, [x, *fused.weights])
    their_grads = tape.gradient(their_loss, [x, cell.kernel, cell.recurrent_kernel, cell.bias])
    for name, a, b in zip(
        ["x", "kernel", "recurrent", "bias"], our_grads, their_grads, strict=True
    ):
        np.testing.assert_allclose(a, b, atol=1e-5, err_msg=name)


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


def test_fused_lstm_runs_in_bfloat16_and_under_xla():
    tf.keras.utils.set_random_seed(2)
    x, _, mask = _inputs()
    fused = recurrent.FusedLSTM(UNITS)
    expected = fused(x, mask)[0]

    @tf.function(jit_compile=True)
    def compiled_grads(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(fused(x, mask)[0])
        return tape.gradient(loss, fused.weights)

    assert all(g.shape == w.shape for g, w in zip(compiled_grads(x), fused.weights, strict=True))
    mixed = recurrent.FusedLSTM(UNITS, dtype="mixed_bfloat16")
    mixed(x, mask)
    for ours, theirs in zip(fused.weights, mixed.weights, strict=True):
        theirs.assign(ours)
    low = mixed(x, mask)[0]
    assert low.dtype == tf.bfloat16 and mixed.kernel.dtype == tf.float32
    np.testing.assert_allclose(tf.cast(low, tf.float32), expected, atol=0.05)


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
