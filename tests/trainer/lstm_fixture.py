"""LSTM weights with a known closed-form run, for the fused kernels' precision tests."""

import numpy as np
import tensorflow as tf


def accumulating_bias(units, step):
    """Bias for gates that are saturated open (i, f, o = 1) and a candidate tanh(g) = step.

    With zero kernels the cell state grows by exactly `step` per real step, c_t = step * t,
    and h_t = tanh(c_t): a sum a bfloat16 state cannot keep (its spacing near 0.5 is 0.004).
    """
    gates = [30.0 * tf.ones([units]), 30.0 * tf.ones([units])]
    gates += [tf.fill([units], float(np.arctanh(step))), 30.0 * tf.ones([units])]
    return tf.concat(gates, 0)
