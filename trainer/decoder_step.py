"""One step of the attention decoder for many hypotheses per sentence, for greedy and beam search.

TFA's `BeamSearchDecoder` runs the `AttentionWrapper` on `batch * beam` rows with the memory
tiled `beam` times, through nested state structures and several passes over [rows, vocabulary]
arrays per step. Here the state is laid out [sentences, hypotheses, ...]: each LSTM layer is one
product of [input, attention, h] with the layer's kernels stacked once before the loop, and
attention is one batched product of every hypothesis of a sentence against that sentence's keys
and values (no tiling). The maths is the teacher-forced kernel's (`attention_decoder`): Keras
`LSTMCell` layers with a residual from `residual_from`, scaled Luong attention over masked
memory, a bias-free attention layer, input feeding. `tests/trainer/test_beam_search.py` checks it
against TFA's decoders.

Only the configurations the fused training kernel covers run here (Luong attention, no layer
norm); `supports` says which, and the model falls back to TFA for the rest. Products run in the
compute dtype and the carried states in float32, as in `recurrent`.
"""

from typing import NamedTuple

import tensorflow as tf

from pipeline import config as config_lib
from trainer import layers, recurrent

STATE_DTYPE = recurrent.STATE_DTYPE


class StepWeights(NamedTuple):
    """The decoder's weights as the step uses them, formed once before the decoding loop."""

    step_kernels: tuple  # per layer: [input width + units, 4 units], input then recurrent rows
    biases: tuple  # per layer: [4 units] in STATE_DTYPE
    residual: tuple  # per layer: whether it adds its input to its output
    attention_kernel: object  # [units + memory width, units]
    scale: object  # the Luong attention scale, a STATE_DTYPE scalar


class Memory(NamedTuple):
    """What attention reads, per sentence: [b, U, S] keys (transposed), [b, S, U] values and
    a [b, 1, S] mask of real source positions."""

    keys_t: object
    values: object
    mask: object


class State(NamedTuple):
    """The decoder state per hypothesis: the last attention vector [b, k, U] (fed back as
    input) and each layer's (h, c) [b, k, units], all in STATE_DTYPE."""

    attention: object
    cells: tuple


def supports(cfg: config_lib.ModelConfig) -> bool:
    """Whether this step reproduces the model's decoder (else decoding runs TFA's)."""
    return cfg.attention == "luong" and not cfg.layer_norm


def step_weights(seq2seq, dtype) -> StepWeights:
    """The model's decoder weights in the products' `dtype` (biases and scale in float32).

    A weight-normalised attention layer gives its normalised kernel, formed here once per search
    as the training kernel forms it once per step (`layers.dense_kernel_and_bias`).
    """
    cell = seq2seq.decoder_cell
    kernels, biases = [], []
    for layer in cell.cells:
        kernels.append(tf.cast(tf.concat([layer.kernel, layer.recurrent_kernel], axis=0), dtype))
        biases.append(recurrent.full_precision(layer.bias))
    residual = tuple(i > 0 and i + 1 >= cell.residual_from for i in range(len(cell.cells)))
    return StepWeights(
        step_kernels=tuple(kernels),
        biases=tuple(biases),
        residual=residual,
        attention_kernel=tf.cast(layers.dense_kernel_and_bias(seq2seq.attention_layer)[0], dtype),
        scale=recurrent.full_precision(seq2seq.attention.scale_weight),
    )


def encode(seq2seq, source_ids, source_lengths) -> Memory:
    """Runs the encoder and prepares attention's keys and values as `LuongAttention` does.

    The memory is zeroed past each source's length before the keys are formed (TFA's
    `setup_memory`); the mechanism itself is not touched, so replicas can decode at once.
    """
    memory, _ = seq2seq.encoder(source_ids, source_lengths, tf.constant([0, 0], tf.int32))
    mask = tf.sequence_mask(source_lengths, tf.shape(memory)[1])
    values = memory * tf.cast(mask, memory.dtype)[:, :, None]
    keys = seq2seq.attention.memory_layer(values)
    return Memory(keys_t=tf.transpose(keys, [0, 2, 1]), values=values, mask=mask[:, None, :])


def memory_invariants(memory: Memory) -> Memory:
    """`tf.while_loop` shape invariants of a memory whose sentences leave as they end."""
    return Memory(
        keys_t=tf.TensorShape([None, memory.keys_t.shape[1], None]),
        values=tf.TensorShape([None, None, memory.values.shape[2]]),
        mask=tf.TensorShape([None, 1, None]),
    )


def initial_state(batch, hypotheses: int, seq2seq) -> State:
    """Zero cell states and attention, as `AttentionWrapper.get_initial_state` gives them."""
    units = seq2seq.cfg.units
    zeros = tf.zeros([batch, hypotheses, units], STATE_DTYPE)
    width = layers.unwrap_dense(seq2seq.attention_layer).units
    attention = tf.zeros([batch, hypotheses, width], STATE_DTYPE)
    return State(attention, tuple((zeros, zeros) for _ in seq2seq.decoder_cell.cells))


def _dense(x, kernel):
    """[b, k, I] @ [I, N] -> [b, k, N] in STATE_DTYPE, as one [b * k, I] product."""
    shape = tf.shape(x)
    flat = tf.matmul(tf.reshape(tf.cast(x, kernel.dtype), [-1, shape[2]]), kernel)
    return tf.reshape(tf.cast(flat, STATE_DTYPE), [shape[0], shape[1], kernel.shape[1]])


def _batched(x, matrices):
    """[b, k, K] x [b, K, N] -> [b, k, N] in STATE_DTYPE, with x cast to the matrices' dtype."""
    return tf.cast(tf.matmul(tf.cast(x, matrices.dtype), matrices), STATE_DTYPE)


def step(weights: StepWeights, memory: Memory, state: State, embedded):
    """One decoder step for every hypothesis: (attention vectors [b, k, U], new state, alignment).

    Args:
      weights: from `step_weights`.
      memory: from `encode`, one row per sentence.
      state: the hypotheses' state, [b, k, ...].
      embedded: [b, k, E] embeddings of the tokens each hypothesis emitted last.

    Returns:
      The attention vectors (what the output projection reads and the next step takes as input),
      the new `State`, and the attention weights [b, k, S] (for the coverage penalty).
    """
    # The first layer reads [embedding, attention, h] in one concatenation (it has no residual).
    inputs, x, cells = [tf.cast(embedded, STATE_DTYPE), state.attention], None, []
    for kernel, bias, residual, (h, c) in zip(
        weights.step_kernels, weights.biases, weights.residual, state.cells, strict=True
    ):
        z = _dense(tf.concat([*inputs, h], axis=-1), kernel) + bias
        new_h, new_c, _, _ = recurrent.cell_forward(z, c)
        cells.append((new_h, new_c))
        x = new_h + x if residual else new_h
        inputs = [x]
    raw = _batched(x, memory.keys_t)  # [b, k, S]
    masked = tf.fill(tf.shape(raw), STATE_DTYPE.min)
    alignment = tf.nn.softmax(tf.where(memory.mask, weights.scale * raw, masked))
    context = _batched(alignment, memory.values)
    attention = _dense(tf.concat([x, context], axis=-1), weights.attention_kernel)
    return attention, State(attention, tuple(cells)), alignment


def gather(tree, indices, batch_dims: int):
    """`tf.gather` of every tensor in a structure (a State, a Memory) along one axis."""
    return tf.nest.map_structure(lambda t: tf.gather(t, indices, batch_dims=batch_dims), tree)
