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

Under mixed precision the products run in the compute dtype and everything carried from step to
step (cell states, the attention vector, their gradients), the attention softmax and the bias
and scale gradients stay in float32, as in `recurrent`.

Inference (greedy, beam search) and the training configurations this kernel does not cover
(Bahdanau attention, layer-normalised cells, scheduled sampling) run TFA's decoder.
"""

import tensorflow as tf

from trainer import recurrent

STATE_DTYPE = recurrent.STATE_DTYPE


def _row_times(rows, matrices):
    """[B, K] x [B, K, N] -> [B, N] in `STATE_DTYPE`, row b times matrix b (in its dtype).

    A [B, 1, K] batched product with the matrices laid out [K, N] (transposed once, outside
    the loops): on CPU 2x to 4x faster than `tf.linalg.matvec` for attention's [32, ~20, 256].
    """
    rows = tf.cast(rows, matrices.dtype)
    return tf.cast(tf.squeeze(tf.matmul(rows[:, None, :], matrices), 1), STATE_DTYPE)


def _make_decoder(num_layers: int, residual_from: int):
    """The kernel for one stack shape; layer i >= 1 adds its input when i + 1 >= residual_from."""
    residual = [i > 0 and i + 1 >= residual_from for i in range(num_layers)]

    @tf.custom_gradient
    def decode(embedded, keys, values, memory_mask, scale, attention_kernel, *cell_weights):
        dtype = embedded.dtype  # of the products; `scale` and the biases are in STATE_DTYPE
        emb_t = recurrent.time_major(embedded)
        steps, batch = tf.shape(emb_t)[0], tf.shape(emb_t)[1]
        # Widths come from the weights' static shapes, so loop states keep theirs.
        emb_width = cell_weights[0].shape[0] - attention_kernel.shape[1]
        units = cell_weights[1].shape[0]
        attention_width = attention_kernel.shape[1]
        query_width = attention_kernel.shape[0] - values.shape[2]
        kernels, recurrent_kernels, biases = (
            cell_weights[0::3],
            cell_weights[1::3],
            cell_weights[2::3],
        )
        # Layer 0's input is [embedding, previous attention]: the embedding half for all steps
        # is one product here; in the loop each layer multiplies [input, h] by [kernel; recurrent].
        projected = recurrent.matmul_all_steps(emb_t, kernels[0][:emb_width])
        projected = tf.cast(projected, STATE_DTYPE) + biases[0]
        step_kernels = [tf.concat([kernels[0][emb_width:], recurrent_kernels[0]], axis=0)]
        step_kernels += [
            tf.concat([k, r], axis=0)
            for k, r in zip(kernels[1:], recurrent_kernels[1:], strict=True)
        ]
        masked_score = tf.fill(tf.shape(memory_mask), STATE_DTYPE.min)
        keys_t = tf.transpose(keys, [0, 2, 1])  # [B, U, S]

        def arrays(n, array_dtype=STATE_DTYPE):
            return [tf.TensorArray(array_dtype, size=steps) for _ in range(n)]

        def body(t, attention, states, outs, saved):
            layer_inputs, prev_cs, gates_all, tanh_cs, query_context, alignments, raw_scores = saved
            x = attention
            new_states = []
            for i in range(num_layers):
                h, c = states[2 * i], states[2 * i + 1]
                inputs = tf.cast(tf.concat([x, h], axis=-1), dtype)
                z = recurrent.product(inputs, step_kernels[i])
                z = z + (projected[t] if i == 0 else biases[i])
                new_h, new_c, gates, tanh_c = recurrent.cell_forward(z, c)
                layer_inputs[i] = layer_inputs[i].write(t, inputs)
                prev_cs[i] = prev_cs[i].write(t, c)
                gates_all[i] = gates_all[i].write(t, gates)
                tanh_cs[i] = tanh_cs[i].write(t, tanh_c)
                new_states += [new_h, new_c]
                x = new_h + x if residual[i] else new_h
            raw = _row_times(x, keys_t)  # [B, S]
            weights = tf.nn.softmax(tf.where(memory_mask, scale * raw, masked_score))
            context = _row_times(weights, values)
            qc = tf.cast(tf.concat([x, context], axis=-1), dtype)
            attention = recurrent.product(qc, attention_kernel)
            saved = (
                layer_inputs,
                prev_cs,
                gates_all,
                tanh_cs,
                query_context.write(t, qc),
                alignments.write(t, weights),
                raw_scores.write(t, raw),
            )
            outs = outs.write(t, tf.cast(attention, dtype))
            return t + 1, attention, tuple(new_states), outs, saved

        zeros_state = tf.zeros([batch, units], STATE_DTYPE)
        saved0 = (
            arrays(num_layers, dtype),
            arrays(num_layers),
            arrays(num_layers),
            arrays(num_layers),
            *arrays(1, dtype),
            *arrays(2),
        )
        _, _, _, outs, saved = tf.while_loop(
            lambda t, *_: t < steps,
            body,
            (
                0,
                tf.zeros([batch, attention_width], STATE_DTYPE),
                (zeros_state,) * (2 * num_layers),
                tf.TensorArray(dtype, size=steps),
                saved0,
            ),
        )
        layer_inputs, prev_cs, gates_all, tanh_cs = (
            [a.stack() for a in group] for group in saved[:4]
        )
        query_context, alignments, raw_scores = (a.stack() for a in saved[4:])
        outputs = recurrent.time_major(outs.stack())

        def grad(d_outputs):
            d_out_t = tf.cast(recurrent.time_major(d_outputs), STATE_DTYPE)
            attention_t = tf.transpose(attention_kernel)
            step_kernels_t = [tf.transpose(k) for k in step_kernels]
            values_t = tf.transpose(values, [0, 2, 1])

            def back_body(n, d_attention, dhs, dcs, d_zs, d_scores, d_contexts, d_atts):
                t = steps - 1 - n
                d_att = d_out_t[t] + d_attention
                d_qc = recurrent.product(d_att, attention_t)
                d_query, d_context = d_qc[:, :query_width], d_qc[:, query_width:]
                weights = alignments[t]
                d_weights = _row_times(d_context, values_t)
                d_score = weights * (
                    d_weights - tf.reduce_sum(weights * d_weights, axis=-1, keepdims=True)
                )
                d_x = d_query + scale * _row_times(d_score, keys)
                new_dhs, new_dcs = list(dhs), list(dcs)
                d_zs = list(d_zs)
                for i in reversed(range(num_layers)):
                    dz, new_dcs[i] = recurrent.cell_backward(
                        d_x + dhs[i], dcs[i], gates_all[i][t], tanh_cs[i][t], prev_cs[i][t]
                    )
                    d_zs[i] = d_zs[i].write(t, dz)
                    d_inputs = recurrent.product(dz, step_kernels_t[i])
                    width = step_kernels[i].shape[0] - units
                    new_dhs[i] = d_inputs[:, width:]
                    d_x = d_inputs[:, :width] + d_x if residual[i] else d_inputs[:, :width]
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

            zeros = (zeros_state,) * num_layers
            _, _, _, _, d_zs, d_scores, d_contexts, d_atts = tf.while_loop(
                lambda n, *_: n < steps,
                back_body,
                (
                    0,
                    tf.zeros([batch, attention_width], STATE_DTYPE),
                    zeros,
                    zeros,
                    tuple(arrays(num_layers)),
                    *arrays(3),
                ),
            )
            d_zs = [a.stack() for a in d_zs]
            d_scores, d_contexts, d_atts = d_scores.stack(), d_contexts.stack(), d_atts.stack()
            # The products after the loop run in the compute dtype; the sums stay in float32.
            d_zs_low = [tf.cast(d_z, dtype) for d_z in d_zs]
            d_embedded = recurrent.time_major(
                recurrent.matmul_all_steps(d_zs_low[0], tf.transpose(kernels[0][:emb_width]))
            )
            d_cell_weights = []
            for i in range(num_layers):
                d_step_kernel = recurrent.outer_all_steps(layer_inputs[i], d_zs_low[i])
                in_width = step_kernels[i].shape[0] - units
                d_kernel = d_step_kernel[:in_width]
                if i == 0:
                    d_kernel = tf.concat(
                        [recurrent.outer_all_steps(emb_t, d_zs_low[0]), d_kernel], axis=0
                    )
                d_cell_weights += [
                    d_kernel,
                    d_step_kernel[in_width:],
                    tf.reduce_sum(d_zs[i], axis=[0, 1]),
                ]
            queries = query_context[:, :, :query_width]
            d_keys = tf.cast(scale, dtype) * tf.einsum(
                "tbs,tbu->bsu", tf.cast(d_scores, dtype), queries
            )
            d_values = tf.einsum(
                "tbs,tbu->bsu", tf.cast(alignments, dtype), tf.cast(d_contexts, dtype)
            )
            d_scale = tf.reduce_sum(d_scores * raw_scores)
            d_attention_kernel = recurrent.outer_all_steps(query_context, tf.cast(d_atts, dtype))
            return (
                d_embedded,
                d_keys,
                d_values,
                None,
                d_scale,
                d_attention_kernel,
                *d_cell_weights,
            )

        return outputs, grad

    return decode


def luong_decode(embedded, memory_lengths, mechanism, attention_layer, cell):
    """Teacher-forced decoder outputs [B, T, units] (the attention vectors, before projection).

    Args:
      embedded: [B, T, E] target inputs in the compute dtype.
      memory_lengths: [B] source lengths (the memory positions attention may look at).
      mechanism: a `LuongAttention(scale=True)` whose `setup_memory` has run.
      attention_layer: the wrapper's bias-free `Dense` over [cell output, context].
      cell: the `StackedResidualCell` of Keras `LSTMCell`s under the wrapper.
    """
    dtype = embedded.dtype
    query_width = cell.output_size
    if not cell.built:
        cell.build(tf.TensorShape([None, embedded.shape[-1] + attention_layer.units]))
    if not mechanism.built:  # `setup_memory` alone does not create the attention scale
        mechanism.build([tf.TensorShape([None, query_width]), mechanism.values.shape[:2]])
    if not attention_layer.built:
        attention_layer.build(tf.TensorShape([None, query_width + mechanism.values.shape[-1]]))
    weights = []
    for layer in cell.cells:
        weights += [
            tf.cast(layer.kernel, dtype),
            tf.cast(layer.recurrent_kernel, dtype),
            recurrent.full_precision(layer.bias),
        ]
    memory_mask = tf.sequence_mask(memory_lengths, tf.shape(mechanism.values)[1])
    decode = _make_decoder(len(cell.cells), cell.residual_from)
    return decode(
        embedded,
        tf.cast(mechanism.keys, dtype),
        tf.cast(mechanism.values, dtype),
        memory_mask,
        recurrent.full_precision(mechanism.scale_weight),
        tf.cast(attention_layer.kernel, dtype),
        *weights,
    )
