"""The teacher-forced attention decoder as one kernel with a hand-written backward pass.

Training spends most of its time in the backward pass of the decoder loop. Autodiff through
TFA's `AttentionWrapper` inside `dynamic_decode` computes, at every step, weight-sized gradients
that it then adds up, transposed-weight products (`dz @ W^T` is ~2.5x slower than a product with
a pre-transposed weight on CPU), and tiny batched products for attention. Here the forward loop
is the same maths on the same variables (stacked LSTM cells with a residual from a given layer,
scaled Luong attention over masked memory, an attention layer with no bias, input feeding) with
the embedding projection hoisted out of it; the backward loop holds only what depends on the next
step's gradient, and every weight, embedding, key and value gradient is one large product after
it. `tests/trainer/test_attention_decoder.py` checks outputs and gradients against the TFA path.

The kernel takes weights as tensors, not layers: a weight-normalised attention layer passes its
normalised kernel (computed once per step, outside the loop), and autodiff carries the kernel's
gradient on to the wrapper's variables.

Under mixed precision the products run in the compute dtype and everything carried from step to
step (cell states, the attention vector, their gradients), the attention softmax and the bias
and scale gradients stay in float32, as in `recurrent`.

Greedy and beam search step the same maths one position at a time (`decoder_step`). The
training configurations this kernel does not cover (Bahdanau attention, layer-normalised cells,
sequential scheduled sampling) run TFA's decoder.
"""

from typing import NamedTuple

import tensorflow as tf

from trainer import layers, recurrent

STATE_DTYPE = recurrent.STATE_DTYPE


class CellWeights(NamedTuple):
    """One LSTM layer: kernels in the compute dtype, bias in `STATE_DTYPE`."""

    kernel: tf.Tensor  # [input width, 4H]; layer 0's input is [embedding, previous attention]
    recurrent_kernel: tf.Tensor  # [H, 4H]
    bias: tf.Tensor  # [4H]


class Weights(NamedTuple):
    """Everything the kernel reads besides the embedded targets."""

    keys: tf.Tensor  # [B, S, U], the attention's processed memory
    values: tf.Tensor  # [B, S, U], the memory itself
    memory_mask: tf.Tensor  # [B, S] bool, real source positions
    scale: tf.Tensor  # scalar in `STATE_DTYPE`: Luong's score scale
    attention_kernel: tf.Tensor  # [H + U, A], the bias-free attention layer
    cells: tuple[CellWeights, ...]


class Saved(NamedTuple):
    """What the forward loop keeps for the backward loop, time-major, stacked."""

    layer_inputs: list  # per layer, [T, B, in + H] in the compute dtype: [input, h] of the step
    prev_cs: list  # per layer, [T, B, H]: the cell state each step started from
    gates: list  # per layer, [T, B, 4H]: activated i, f, g, o
    tanh_cs: list  # per layer, [T, B, H]: tanh of the new cell state
    query_context: tf.Tensor  # [T, B, H + U] in the compute dtype: the attention layer's input
    alignments: tf.Tensor  # [T, B, S]: attention weights
    raw_scores: tf.Tensor  # [T, B, S]: query . keys, before the scale


class _Stack(NamedTuple):
    """The static shape of the cell stack: which layers add their input to their output."""

    residual: tuple[bool, ...]

    @property
    def num_layers(self) -> int:
        return len(self.residual)


def _row_times(rows, matrices):
    """[B, K] x [B, K, N] -> [B, N] in `STATE_DTYPE`, row b times matrix b (in its dtype).

    A [B, 1, K] batched product with the matrices laid out [K, N] (transposed once, outside
    the loops): on CPU 2x to 4x faster than `tf.linalg.matvec` for attention's [32, ~20, 256].
    """
    rows = tf.cast(rows, matrices.dtype)
    return tf.cast(tf.squeeze(tf.matmul(rows[:, None, :], matrices), 1), STATE_DTYPE)


def _step_kernels(weights: Weights, emb_width: int):
    """Per layer, [input; h] -> gates in one product: [kernel (minus layer 0's embedding
    rows, which are applied to all steps at once); recurrent kernel]."""
    cells = weights.cells
    first = tf.concat([cells[0].kernel[emb_width:], cells[0].recurrent_kernel], axis=0)
    return [first] + [tf.concat([c.kernel, c.recurrent_kernel], axis=0) for c in cells[1:]]


def _forward(emb_t, weights: Weights, stack: _Stack, keep: bool):
    """The decoder loop over time-major embedded targets [T, B, E].

    Returns the attention vectors [T, B, A] in the compute dtype, and the `Saved` activations
    when `keep` (else None: a pass whose outputs need no gradient writes nothing else).
    """
    dtype = emb_t.dtype
    steps, batch = tf.shape(emb_t)[0], tf.shape(emb_t)[1]
    cells = weights.cells
    # Widths come from the weights' static shapes, so loop states keep theirs.
    emb_width = emb_t.shape[-1]
    units = cells[0].recurrent_kernel.shape[0]
    attention_width = weights.attention_kernel.shape[1]
    # Layer 0's input is [embedding, previous attention]: the embedding half for all steps is
    # one product here; in the loop each layer multiplies [input, h] by its step kernel.
    projected = recurrent.matmul_all_steps(emb_t, cells[0].kernel[:emb_width])
    projected = tf.cast(projected, STATE_DTYPE) + cells[0].bias
    step_kernels = _step_kernels(weights, emb_width)
    masked_score = tf.fill(tf.shape(weights.memory_mask), STATE_DTYPE.min)
    keys_t = tf.transpose(weights.keys, [0, 2, 1])  # [B, U, S]
    layers_n = stack.num_layers

    def arrays(n, array_dtype=STATE_DTYPE):
        return [tf.TensorArray(array_dtype, size=steps) for _ in range(n)]

    def body(t, attention, states, outs, saved):
        x = attention
        new_states, step_saved = [], []
        for i in range(layers_n):
            h, c = states[2 * i], states[2 * i + 1]
            inputs = tf.cast(tf.concat([x, h], axis=-1), dtype)
            z = recurrent.product(inputs, step_kernels[i])
            z = z + (projected[t] if i == 0 else cells[i].bias)
            new_h, new_c, gates, tanh_c = recurrent.cell_forward(z, c)
            step_saved.append((inputs, c, gates, tanh_c))
            new_states += [new_h, new_c]
            x = new_h + x if stack.residual[i] else new_h
        raw = _row_times(x, keys_t)  # [B, S]
        scores = tf.where(weights.memory_mask, weights.scale * raw, masked_score)
        alignment = tf.nn.softmax(scores)
        context = _row_times(alignment, weights.values)
        qc = tf.cast(tf.concat([x, context], axis=-1), dtype)
        attention = recurrent.product(qc, weights.attention_kernel)
        outs = outs.write(t, tf.cast(attention, dtype))
        if keep:
            per_layer = [
                [a.write(t, v) for a, v in zip(saved[k], column, strict=True)]
                for k, column in enumerate(zip(*step_saved, strict=True))
            ]
            saved = Saved(
                *per_layer,
                saved.query_context.write(t, qc),
                saved.alignments.write(t, alignment),
                saved.raw_scores.write(t, raw),
            )
        return t + 1, attention, tuple(new_states), outs, saved

    zeros_state = tf.zeros([batch, units], STATE_DTYPE)
    saved0 = ()
    if keep:
        saved0 = Saved(
            arrays(layers_n, dtype),
            arrays(layers_n),
            arrays(layers_n),
            arrays(layers_n),
            *arrays(1, dtype),
            *arrays(2),
        )
    _, _, _, outs, saved = tf.while_loop(
        lambda t, *_: t < steps,
        body,
        (
            0,
            tf.zeros([batch, attention_width], STATE_DTYPE),
            (zeros_state,) * (2 * layers_n),
            tf.TensorArray(dtype, size=steps),
            saved0,
        ),
    )
    if not keep:
        return outs.stack(), None
    stacked = Saved(
        *([a.stack() for a in group] for group in saved[:4]),
        *(a.stack() for a in saved[4:]),
    )
    return outs.stack(), stacked


def _backward(d_out_t, emb_t, weights: Weights, stack: _Stack, saved: Saved):
    """Gradients of the embedded targets [T, B, E] (time-major) and of every `Weights` field
    (None for the memory mask), from the gradient of the attention vectors [T, B, A]."""
    dtype = emb_t.dtype
    steps, batch = tf.shape(emb_t)[0], tf.shape(emb_t)[1]
    cells = weights.cells
    emb_width = emb_t.shape[-1]
    units = cells[0].recurrent_kernel.shape[0]
    attention_width = weights.attention_kernel.shape[1]
    query_width = weights.attention_kernel.shape[0] - weights.values.shape[2]
    step_kernels = _step_kernels(weights, emb_width)
    attention_t = tf.transpose(weights.attention_kernel)
    step_kernels_t = [tf.transpose(k) for k in step_kernels]
    values_t = tf.transpose(weights.values, [0, 2, 1])
    scale = weights.scale

    def back_body(n, d_attention, dhs, dcs, d_zs, d_scores, d_contexts, d_atts):
        t = steps - 1 - n
        d_att = d_out_t[t] + d_attention
        d_qc = recurrent.product(d_att, attention_t)
        d_query, d_context = d_qc[:, :query_width], d_qc[:, query_width:]
        alignment = saved.alignments[t]
        d_alignment = _row_times(d_context, values_t)
        d_score = alignment * (
            d_alignment - tf.reduce_sum(alignment * d_alignment, axis=-1, keepdims=True)
        )
        d_x = d_query + scale * _row_times(d_score, weights.keys)
        new_dhs, new_dcs, d_zs = list(dhs), list(dcs), list(d_zs)
        for i in reversed(range(stack.num_layers)):
            dz, new_dcs[i] = recurrent.cell_backward(
                d_x + dhs[i], dcs[i], saved.gates[i][t], saved.tanh_cs[i][t], saved.prev_cs[i][t]
            )
            d_zs[i] = d_zs[i].write(t, dz)
            d_inputs = recurrent.product(dz, step_kernels_t[i])
            width = step_kernels[i].shape[0] - units
            new_dhs[i] = d_inputs[:, width:]
            d_x = d_inputs[:, :width] + d_x if stack.residual[i] else d_inputs[:, :width]
        return (
            n + 1,
            d_x,  # layer 0's loop input is the previous step's attention
            tuple(new_dhs),
            tuple(new_dcs),
            tuple(d_zs),
            d_scores.write(t, d_score),
            d_contexts.write(t, d_context),
            d_atts.write(t, d_att),
        )

    def arrays(n):
        return [tf.TensorArray(STATE_DTYPE, size=steps) for _ in range(n)]

    zeros = (tf.zeros([batch, units], STATE_DTYPE),) * stack.num_layers
    _, _, _, _, d_zs, d_scores, d_contexts, d_atts = tf.while_loop(
        lambda n, *_: n < steps,
        back_body,
        (
            0,
            tf.zeros([batch, attention_width], STATE_DTYPE),
            zeros,
            zeros,
            tuple(arrays(stack.num_layers)),
            *arrays(3),
        ),
    )
    d_zs = [a.stack() for a in d_zs]
    d_scores, d_contexts, d_atts = d_scores.stack(), d_contexts.stack(), d_atts.stack()
    # The products after the loop run in the compute dtype; the sums stay in float32.
    d_zs_low = [tf.cast(d_z, dtype) for d_z in d_zs]
    d_embedded_t = recurrent.matmul_all_steps(
        d_zs_low[0], tf.transpose(cells[0].kernel[:emb_width])
    )
    d_cells = []
    for i in range(stack.num_layers):
        d_step_kernel = recurrent.outer_all_steps(saved.layer_inputs[i], d_zs_low[i])
        in_width = step_kernels[i].shape[0] - units
        d_kernel = d_step_kernel[:in_width]
        if i == 0:
            d_kernel = tf.concat([recurrent.outer_all_steps(emb_t, d_zs_low[0]), d_kernel], 0)
        d_cells.append(
            CellWeights(d_kernel, d_step_kernel[in_width:], tf.reduce_sum(d_zs[i], axis=[0, 1]))
        )
    queries = saved.query_context[:, :, :query_width]
    d_keys = tf.cast(scale, dtype) * tf.einsum("tbs,tbu->bsu", tf.cast(d_scores, dtype), queries)
    d_values = tf.einsum(
        "tbs,tbu->bsu", tf.cast(saved.alignments, dtype), tf.cast(d_contexts, dtype)
    )
    d_weights = Weights(
        keys=d_keys,
        values=d_values,
        memory_mask=None,
        scale=tf.reduce_sum(d_scores * saved.raw_scores),
        attention_kernel=recurrent.outer_all_steps(saved.query_context, tf.cast(d_atts, dtype)),
        cells=tuple(d_cells),
    )
    return d_embedded_t, d_weights


def _make_decoder(stack: _Stack):
    """The differentiable kernel for one stack shape, over flat tensors (`tf.custom_gradient`
    takes no nested arguments): embedded targets [B, T, E], then `Weights` flattened."""

    @tf.custom_gradient
    def decode(embedded, *flat_weights):
        weights = _unflatten(flat_weights, stack)
        emb_t = recurrent.time_major(embedded)
        outs, saved = _forward(emb_t, weights, stack, keep=True)

        def grad(d_outputs):
            d_out_t = tf.cast(recurrent.time_major(d_outputs), STATE_DTYPE)
            d_embedded_t, d_weights = _backward(d_out_t, emb_t, weights, stack, saved)
            return (recurrent.time_major(d_embedded_t), *tf.nest.flatten(d_weights))

        return recurrent.time_major(outs), grad

    return decode


def _unflatten(flat, stack: _Stack) -> Weights:
    cells = tuple(CellWeights(None, None, None) for _ in range(stack.num_layers))
    template = Weights(None, None, None, None, None, cells)
    return tf.nest.pack_sequence_as(template, list(flat))


def luong_decode(embedded, memory_lengths, mechanism, attention_layer, cell, trainable=True):
    """Teacher-forced decoder outputs [B, T, units] (the attention vectors, before projection).

    Args:
      embedded: [B, T, E] target inputs in the compute dtype.
      memory_lengths: [B] source lengths (the memory positions attention may look at).
      mechanism: a `LuongAttention(scale=True)` whose `setup_memory` has run.
      attention_layer: the wrapper's bias-free `Dense` over [cell output, context], or that
        layer weight-normalised (`layers.dense_kernel_and_bias` reads either).
      cell: the `StackedResidualCell` of Keras `LSTMCell`s under the wrapper.
      trainable: False runs the forward loop alone, keeping no activations, and returns
        outputs without a gradient (the first pass of parallel scheduled sampling).
    """
    dtype = embedded.dtype
    query_width = cell.output_size
    if not cell.built:
        attention_width = layers.unwrap_dense(attention_layer).units
        cell.build(tf.TensorShape([None, embedded.shape[-1] + attention_width]))
    if not mechanism.built:  # `setup_memory` alone does not create the attention scale
        mechanism.build([tf.TensorShape([None, query_width]), mechanism.values.shape[:2]])
    if not attention_layer.built:
        attention_layer.build(tf.TensorShape([None, query_width + mechanism.values.shape[-1]]))
    attention_kernel, _ = layers.dense_kernel_and_bias(attention_layer)
    weights = Weights(
        keys=tf.cast(mechanism.keys, dtype),
        values=tf.cast(mechanism.values, dtype),
        memory_mask=tf.sequence_mask(memory_lengths, tf.shape(mechanism.values)[1]),
        scale=recurrent.full_precision(mechanism.scale_weight),
        attention_kernel=tf.cast(attention_kernel, dtype),
        cells=tuple(
            CellWeights(
                tf.cast(layer.kernel, dtype),
                tf.cast(layer.recurrent_kernel, dtype),
                recurrent.full_precision(layer.bias),
            )
            for layer in cell.cells
        ),
    )
    stack = _Stack(tuple(i > 0 and i + 1 >= cell.residual_from for i in range(len(cell.cells))))
    if not trainable:
        weights = tf.nest.map_structure(tf.stop_gradient, weights)
        outs, _ = _forward(recurrent.time_major(tf.stop_gradient(embedded)), weights, stack, False)
        return recurrent.time_major(outs)
    return _make_decoder(stack)(embedded, *tf.nest.flatten(weights))
