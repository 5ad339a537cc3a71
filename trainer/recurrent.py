"""A whole-sequence LSTM layer with a hand-written backward pass, for the encoder.

Autodiff through a `tf.while_loop` LSTM keeps every weight product inside the loop: each step
multiplies its input by the input kernel, and the backward loop computes and accumulates a
weight-sized gradient per step (small, memory-bound matrix products on CPU). Here the input
projection for all steps is one matrix product before the loop, the loop holds only the recurrent
product and the gate arithmetic, and the backward loop holds only `dz @ U^T`: the kernel,
recurrent-kernel and input gradients are each one large product after it (what cuDNN does).

The maths is Keras' `LSTMCell` (gates i, f, c, o; sigmoid and tanh; `unit_forget_bias`), and
masked steps carry the state through unchanged and output zeros; `tests/trainer/test_recurrent.py`
checks outputs and gradients against `tf.keras.layers.RNN(LSTMCell)`.

Under a mixed precision policy only the matrix products run in the compute dtype (bfloat16 or
float16). The cell state, the gate arithmetic, the carried gradients and the bias gradient stay
in float32: a bfloat16 cell state is rounded to 8 significant bits at every step (one growing by
0.003 per step ends 10% off after 300 steps; `test_recurrent` checks this), and a bias gradient
is a sum over every step and row. With float32 compute every cast here is the identity
(`tf.cast` adds no op), so that path is unchanged.
"""

import tensorflow as tf

STATE_DTYPE = tf.float32


def full_precision(variable):
    """A variable's value in its own dtype (float32), even inside a mixed-precision layer.

    There Keras wraps each variable so that reads return the compute dtype; the biases and the
    attention scale feed float32 arithmetic here, and a read through bfloat16 would round them and
    their gradients. The wrapper keeps the variable it casts as `_variable` (Keras 2.15).
    """
    return tf.convert_to_tensor(getattr(variable, "_variable", variable))


def product(a, w):
    """a @ w with both in w's (compute) dtype, returned in `STATE_DTYPE` for the cell arithmetic."""
    return tf.cast(tf.matmul(tf.cast(a, w.dtype), w), STATE_DTYPE)


def cell_forward(z, c):
    """One LSTM step from pre-activations z [B, 4H] and cell state c: (h, c, gates, tanh(c)).

    `gates` are the activated i, f, g, o concatenated, as `cell_backward` takes them.
    """
    i, f, g, o = tf.split(z, 4, axis=-1)
    i, f, g, o = tf.sigmoid(i), tf.sigmoid(f), tf.tanh(g), tf.sigmoid(o)
    new_c = f * c + i * g
    tanh_c = tf.tanh(new_c)
    return o * tanh_c, new_c, tf.concat([i, f, g, o], axis=-1), tanh_c


def time_major(x):
    return tf.transpose(x, [1, 0, 2])


def matmul_all_steps(x, w):
    """[T, B, D] @ [D, K] -> [T, B, K] as one product."""
    shape = tf.shape(x)
    flat = tf.matmul(tf.reshape(x, [-1, shape[2]]), w)
    return tf.reshape(flat, [shape[0], shape[1], tf.shape(w)[1]])


def outer_all_steps(a, b):
    """Sum over steps and batch of a[t, b]^T b[t, b]: [T, B, D], [T, B, K] -> [D, K]."""
    return tf.matmul(
        tf.reshape(a, [-1, tf.shape(a)[2]]), tf.reshape(b, [-1, tf.shape(b)[2]]), transpose_a=True
    )


def cell_backward(dh, dc, gates, tanh_c, prev_c):
    """One LSTM step backward: (d pre-activations [B, 4H], d previous cell state).

    Args:
      dh, dc: gradients reaching this step's new h and new c.
      gates: the step's activated gates, i, f, g, o concatenated; tanh_c: tanh(new c);
      prev_c: the cell state the step started from.
    """
    i, f, g, o = tf.split(gates, 4, axis=-1)
    dc = dc + dh * o * (1 - tanh_c * tanh_c)
    dz = tf.concat(
        [
            dc * g * i * (1 - i),
            dc * prev_c * f * (1 - f),
            dc * i * (1 - g * g),
            dh * tanh_c * o * (1 - o),
        ],
        axis=-1,
    )
    return dz, dc * f


def lstm_sequence(inputs, mask, kernel, recurrent_kernel, bias, reverse: bool = False):
    """Runs an LSTM over [B, T, D] inputs from a zero state.

    Args:
      inputs: [B, T, D] in the compute dtype.
      mask: [B, T] bool; False steps keep the state and output zeros.
      kernel, recurrent_kernel: [D, 4H], [H, 4H] in the compute dtype; bias: [4H] in
        `STATE_DTYPE`.
      reverse: run from the last step to the first (the backward half of a bidirectional layer).

    Returns:
      outputs [B, T, H] (in input order), final h [B, H], final c [B, H], in the compute dtype.
    """
    mask_t = time_major(tf.cast(mask, STATE_DTYPE)[:, :, None])
    lstm = _REVERSE if reverse else _FORWARD
    return lstm(inputs, mask_t, kernel, recurrent_kernel, bias)


def _step_order(steps, reverse):
    """The time index the n-th iteration visits."""
    return (lambda n: steps - 1 - n) if reverse else (lambda n: n)


def _make_lstm(reverse: bool):
    @tf.custom_gradient
    def lstm(x, mask_t, kernel, recurrent_kernel, bias):
        dtype = x.dtype
        x_t = time_major(x)
        steps, batch = tf.shape(x_t)[0], tf.shape(x_t)[1]
        units = tf.shape(recurrent_kernel)[0]
        projected = tf.cast(matmul_all_steps(x_t, kernel), STATE_DTYPE) + bias
        at = _step_order(steps, reverse)

        def arrays(array_dtype):
            return tf.TensorArray(array_dtype, size=steps, element_shape=None)

        def body(n, h, c, outs, prev_h, prev_c, gates, tanh_c):
            t = at(n)
            new_h, new_c, step_gates, new_tanh_c = cell_forward(
                projected[t] + product(h, recurrent_kernel), c
            )
            m = mask_t[t]
            outs = outs.write(t, tf.cast(new_h * m, dtype))
            prev_h, prev_c = prev_h.write(t, tf.cast(h, dtype)), prev_c.write(t, c)
            gates = gates.write(t, step_gates)
            tanh_c = tanh_c.write(t, new_tanh_c)
            h = h + m * (new_h - h)
            c = c + m * (new_c - c)
            return n + 1, h, c, outs, prev_h, prev_c, gates, tanh_c

        zeros = tf.zeros([batch, units], STATE_DTYPE)
        state_arrays = (arrays(STATE_DTYPE) for _ in range(3))
        _, h, c, outs, prev_h, prev_c, gates, tanh_c = tf.while_loop(
            lambda n, *_: n < steps,
            body,
            (0, zeros, zeros, arrays(dtype), arrays(dtype), *state_arrays),
        )
        prev_h, prev_c = prev_h.stack(), prev_c.stack()
        gates, tanh_c = gates.stack(), tanh_c.stack()
        outputs = time_major(outs.stack())

        def grad(d_outputs, d_h, d_c):
            d_out_t = tf.cast(time_major(d_outputs), STATE_DTYPE)
            back = _step_order(steps, not reverse)
            recurrent_t = tf.transpose(recurrent_kernel)

            def back_body(n, dh, dc, d_z):
                t = back(n)
                m = mask_t[t]
                dz, dc_prev = cell_backward(
                    m * (dh + d_out_t[t]), m * dc, gates[t], tanh_c[t], prev_c[t]
                )
                d_z = d_z.write(t, dz)
                dh = product(dz, recurrent_t) + (1 - m) * dh
                dc = dc_prev + (1 - m) * dc
                return n + 1, dh, dc, d_z

            dh0 = zeros if d_h is None else tf.cast(d_h, STATE_DTYPE)
            dc0 = zeros if d_c is None else tf.cast(d_c, STATE_DTYPE)
            _, _, _, d_z = tf.while_loop(
                lambda n, *_: n < steps, back_body, (0, dh0, dc0, arrays(STATE_DTYPE))
            )
            d_z = d_z.stack()
            d_z_low = tf.cast(d_z, dtype)
            d_x = time_major(matmul_all_steps(d_z_low, tf.transpose(kernel)))
            return (
                d_x,
                None,
                outer_all_steps(x_t, d_z_low),
                outer_all_steps(prev_h, d_z_low),
                tf.reduce_sum(d_z, axis=[0, 1]),
            )

        return (outputs, tf.cast(h, dtype), tf.cast(c, dtype)), grad

    return lstm


_FORWARD, _REVERSE = _make_lstm(False), _make_lstm(True)


class FusedLSTM(tf.keras.layers.Layer):
    """An LSTM layer over whole sequences (Keras LSTMCell maths and initialisers)."""

    def __init__(self, units: int, reverse: bool = False, **kw):
        super().__init__(**kw)
        self.units = units
        self.reverse = reverse

    def build(self, input_shape):
        width = int(input_shape[-1])
        self.kernel = self.add_weight(
            "kernel", [width, 4 * self.units], initializer="glorot_uniform"
        )
        self.recurrent_kernel = self.add_weight(
            "recurrent_kernel", [self.units, 4 * self.units], initializer="orthogonal"
        )

        def unit_forget_bias(shape, dtype=None):
            del shape
            blocks = [tf.zeros([self.units]), tf.ones([self.units]), tf.zeros([2 * self.units])]
            return tf.cast(tf.concat(blocks, 0), dtype or tf.float32)

        self.bias = self.add_weight("bias", [4 * self.units], initializer=unit_forget_bias)
        super().build(input_shape)

    def call(self, inputs, mask):
        """Returns (outputs [B, T, units], final h, final c)."""
        dtype = inputs.dtype
        return lstm_sequence(
            inputs,
            mask,
            tf.cast(self.kernel, dtype),
            tf.cast(self.recurrent_kernel, dtype),
            full_precision(self.bias),
            reverse=self.reverse,
        )
