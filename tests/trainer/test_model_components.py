"""Unit tests of the model's parts: dropout, residual wiring, masking, shapes, weight
normalisation and beam search."""

import dataclasses
import math

import numpy as np
import pytest
import tensorflow as tf

from pipeline import config as config_lib
from pipeline import vocab as vocab_lib
from trainer import beam_search, layers, model, tfa_lib

SOURCE_VOCAB, TARGET_VOCAB = 20, 24


def _model_cfg(**changes) -> config_lib.ModelConfig:
    tiny = config_lib.get_experiment("attention_seq2seq/tiny").model
    return dataclasses.replace(tiny, embedding_dim=6, units=8, **changes)


def _build(seed=0, **changes) -> model.Seq2Seq:
    """A model with every variable created (teacher forcing alone never builds the projection)."""
    tf.keras.utils.set_random_seed(seed)
    seq2seq = model.Seq2Seq(_model_cfg(**changes), SOURCE_VOCAB, TARGET_VOCAB)
    seq2seq(_inputs())
    seq2seq.projection(tf.zeros([1, seq2seq.cfg.units]))
    return seq2seq


def _inputs():
    """Three pairs padded with PAD (0); sources end with EOS (3), targets start with BOS (2)."""
    return {
        "source_ids": tf.constant([[5, 6, 7, 3, 0, 0], [5, 6, 3, 0, 0, 0], [8, 9, 10, 11, 12, 3]]),
        "source_lengths": tf.constant([4, 3, 6]),
        "target_in": tf.constant([[2, 5, 6, 7, 0], [2, 5, 0, 0, 0], [2, 5, 6, 7, 8]]),
        "target_lengths": tf.constant([4, 2, 5]),
    }


def _pad_columns(ids, extra: int, value: int = vocab_lib.PAD_ID):
    return tf.pad(ids, [[0, 0], [0, extra]], constant_values=value)


def _garbage_in_padding(ids, lengths):
    """Replaces every padded position by a real-looking id: masking must not read values."""
    mask = tf.sequence_mask(lengths, tf.shape(ids)[1])
    return tf.where(mask, ids, tf.fill(tf.shape(ids), 9))


def _real(x, lengths):
    """x [B, T, ...] at the positions before each length, as one [N, ...] array."""
    return tf.boolean_mask(x, tf.sequence_mask(lengths, tf.shape(x)[1])).numpy()


def _zero_weights(layer):
    for weight in layer.weights:
        weight.assign(tf.zeros_like(weight))


# stateless_dropout


def test_dropout_is_identity_when_not_training_or_rate_zero():
    x = tf.random.stateless_normal([4, 5], [1, 2])
    assert layers.stateless_dropout(x, 0.5, tf.constant([1, 2]), training=False) is x
    assert layers.stateless_dropout(x, 0.0, tf.constant([1, 2]), training=True) is x


def test_dropout_mask_depends_only_on_seed():
    x = tf.ones([64, 32])
    a = layers.stateless_dropout(x, 0.5, tf.constant([7, 1]), training=True)
    b = layers.stateless_dropout(x, 0.5, tf.constant([7, 1]), training=True)
    c = layers.stateless_dropout(x, 0.5, tf.constant([7, 2]), training=True)
    np.testing.assert_array_equal(a, b)
    assert np.mean(a.numpy() != c.numpy()) > 0.3


def test_dropout_keeps_expectation_and_drops_at_rate():
    rate = 0.3
    x = tf.fill([500, 200], 2.0)
    y = layers.stateless_dropout(x, rate, tf.constant([3, 4]), training=True).numpy()
    # 1e5 draws: the standard error of the mean is ~0.004 and of the drop fraction ~0.0015.
    assert abs(y.mean() - 2.0) < 0.03
    assert abs(np.mean(y == 0.0) - rate) < 0.01
    np.testing.assert_allclose(np.unique(y), [0.0, 2.0 / (1.0 - rate)], rtol=1e-6)


# StackedResidualCell


def _run_stacked(num_layers, residual_from, layer_norm=False):
    tf.keras.utils.set_random_seed(1)
    cell = layers.StackedResidualCell(8, num_layers, residual_from, layer_norm)
    inputs = tf.random.stateless_normal([3, 5], [0, 1])
    states = tuple(tf.random.stateless_normal([3, 8], [1, i]) for i in range(2 * num_layers))
    output, new_states = cell(inputs, states)
    return cell, inputs, states, output, new_states


@pytest.mark.parametrize(
    "residual_from, summed_layers",
    [(2, [0, 1, 2]), (3, [1, 2]), (4, [2]), (1, [0, 1, 2])],
)
def test_stacked_cell_output_adds_residuals_from_the_configured_layer(residual_from, summed_layers):
    """A layer's h state is its raw LSTM output, so the cell output is the sum of the residual
    chain's h states; the bottom layer never gets one (its input has another width)."""
    _, _, _, output, new_states = _run_stacked(3, residual_from)
    hs = new_states[0::2]
    expected = sum(hs[i] for i in summed_layers)
    np.testing.assert_allclose(output, expected, rtol=1e-5, atol=1e-6)
    assert len(new_states) == 6


def test_stacked_cell_feeds_each_layer_the_residual_sum_below():
    cell, inputs, states, output, new_states = _run_stacked(3, 2)
    h1, h2 = new_states[0], new_states[2]
    _, (h3, c3) = cell.cells[2](h1 + h2, [states[4], states[5]])
    np.testing.assert_allclose(new_states[4], h3, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new_states[5], c3, rtol=1e-5, atol=1e-6)


def test_stacked_cell_with_a_zeroed_top_layer_passes_its_input_through():
    """An LSTM with zero weights and zero state outputs exactly 0, so only the residual is left."""
    cell, inputs, states, _, _ = _run_stacked(2, 2)
    _zero_weights(cell.cells[1])
    zero_state = tf.zeros([3, 8])
    states = (states[0], states[1], zero_state, zero_state)
    output, new_states = cell(inputs, states)
    np.testing.assert_array_equal(new_states[2], np.zeros([3, 8]))
    np.testing.assert_allclose(output, new_states[0], rtol=1e-6)
    assert np.abs(output.numpy()).max() > 0


def test_stacked_cell_state_is_a_flat_tuple_with_layer_norm():
    cell, _, _, output, new_states = _run_stacked(2, 2, layer_norm=True)
    assert isinstance(new_states, tuple) and len(new_states) == 4
    assert cell.state_size == (8, 8, 8, 8)
    assert output.shape == (3, 8)


# Encoder


@pytest.mark.parametrize("residual_from, residual", [(2, True), (4, False)])
def test_encoder_upper_layers_add_the_layer_below(residual_from, residual):
    tf.keras.utils.set_random_seed(2)
    cfg = _model_cfg(encoder_layers=3, residual_from=residual_from)
    encoder = layers.Encoder(cfg, SOURCE_VOCAB)
    batch = _inputs()
    ids, lengths = batch["source_ids"], batch["source_lengths"]
    seed = tf.constant([0, 0])
    encoder(ids, lengths, seed)
    mask = tf.sequence_mask(lengths, tf.shape(ids)[1])
    embedded = encoder.embedding(ids)
    bottom = tf.concat(
        [encoder.forward_layer(embedded, mask)[0], encoder.backward_layer(embedded, mask)[0]], -1
    )
    middle, _, _ = encoder.upper[0](bottom, mask)
    if residual:
        middle += bottom
    top, h, c = encoder.upper[1](middle, mask)
    expected = top + middle if residual else top
    memory, state = encoder(ids, lengths, seed)
    np.testing.assert_allclose(_real(memory, lengths), _real(expected, lengths), atol=1e-5)
    np.testing.assert_allclose(state[0], h, atol=1e-6)

    # With both upper layers zeroed, memory is the bottom output (residual) or exactly zero.
    for layer in encoder.upper:
        _zero_weights(layer)
    memory, _ = encoder(ids, lengths, seed)
    expected = _real(bottom, lengths) if residual else 0.0 * _real(bottom, lengths)
    np.testing.assert_allclose(_real(memory, lengths), expected, atol=1e-6)


def test_encoder_memory_ignores_padding_values_and_extra_padding():
    tf.keras.utils.set_random_seed(3)
    encoder = layers.Encoder(_model_cfg(encoder_layers=3), SOURCE_VOCAB)
    batch = _inputs()
    ids, lengths = batch["source_ids"], batch["source_lengths"]
    seed = tf.constant([0, 0])
    memory, (h, c) = encoder(ids, lengths, seed)
    for other in (_pad_columns(ids, 4), _garbage_in_padding(_pad_columns(ids, 4), lengths)):
        padded_memory, (padded_h, padded_c) = encoder(other, lengths, seed)
        assert padded_memory.shape[1] == ids.shape[1] + 4
        np.testing.assert_allclose(_real(padded_memory, lengths), _real(memory, lengths), atol=1e-5)
        np.testing.assert_allclose(padded_h, h, atol=1e-5)
        np.testing.assert_allclose(padded_c, c, atol=1e-5)


# Seq2Seq: masking and shapes


@pytest.mark.parametrize("attention", ["luong", "bahdanau"])
def test_decoder_outputs_ignore_source_and_target_padding(attention):
    seq2seq = _build(attention=attention)
    batch = _inputs()
    lengths = batch["target_lengths"]
    reference = _real(seq2seq(batch), lengths)
    padded_source = _garbage_in_padding(
        _pad_columns(batch["source_ids"], 5), batch["source_lengths"]
    )
    variants = [
        dict(batch, source_ids=padded_source),
        dict(batch, target_in=_pad_columns(batch["target_in"], 3)),
        dict(batch, target_in=_garbage_in_padding(batch["target_in"], lengths)),
    ]
    for inputs in variants:
        np.testing.assert_allclose(_real(seq2seq(inputs), lengths), reference, atol=1e-5)
    # The check can fail: a change at a real source position does change the outputs.
    changed = dict(
        batch, source_ids=tf.tensor_scatter_nd_update(batch["source_ids"], [[0, 1]], [9])
    )
    assert not np.allclose(_real(seq2seq(changed), lengths), reference, atol=1e-5)


@pytest.mark.parametrize("attention", ["luong", "bahdanau"])
@pytest.mark.parametrize("tie_embeddings", [False, True])
@pytest.mark.parametrize("layer_norm", [False, True])
def test_output_shapes(attention, tie_embeddings, layer_norm):
    seq2seq = _build(attention=attention, tie_embeddings=tie_embeddings, layer_norm=layer_norm)
    batch = _inputs()
    outputs = seq2seq(batch)
    assert outputs.shape == (3, 5, 8)
    assert seq2seq.projection(outputs).shape == (3, 5, TARGET_VOCAB)
    sampled = seq2seq(dict(batch, sampling_probability=tf.constant(0.5)), training=True)
    assert sampled.shape == (3, 5, TARGET_VOCAB)

    ids, lengths, _ = seq2seq.greedy_decode(batch["source_ids"], batch["source_lengths"], 6)
    assert ids.shape[0] == 3 and ids.shape[1] <= 6 and ids.dtype == tf.int32
    assert lengths.shape == (3,) and np.all(lengths.numpy() <= 6)

    ids, scores, lengths = seq2seq.beam_search(
        batch["source_ids"], batch["source_lengths"], beam_width=2, max_length=6
    )
    assert ids.shape[:2] == (3, 2) and ids.shape[2] <= 6
    assert scores.shape == (3, 2) and lengths.shape == (3, 2)
    assert np.all(lengths.numpy() <= 6)

    names = {v.name for v in seq2seq.trainable_variables}
    assert any("projection/dense" in n for n in names) != tie_embeddings
    assert any("pre_projection" in n for n in names) == tie_embeddings


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("tie_embeddings", [False, True])
def test_precast_projection_gives_the_layers_logits(policy, tie_embeddings):
    """The decoding loops' projection (weights cast once) is the layer's call, bit for bit."""
    tf.keras.mixed_precision.set_global_policy(policy)
    try:
        seq2seq = _build(tie_embeddings=tie_embeddings)
        outputs = seq2seq(_inputs())
        projection = seq2seq.projection
        bias = projection.bias if tie_embeddings else projection.dense.bias
        bias.assign(tf.linspace(-1.0, 1.0, TARGET_VOCAB))  # zeros would hide a missing bias
        rows = tf.reshape(outputs, [-1, outputs.shape[-1]])
        expected = seq2seq.projection(rows)
        actual = seq2seq.projection.precast()(rows)
        assert actual.dtype == expected.dtype == tf.as_dtype(seq2seq.projection.compute_dtype)
        np.testing.assert_array_equal(actual.numpy(), expected.numpy())
        assert np.ptp(actual.numpy().astype(np.float32)) > 0
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")


# Weight normalisation


def test_weight_norm_starts_as_the_plain_layer_and_separates_length_from_direction():
    tf.keras.utils.set_random_seed(5)
    wrapped = layers.build_dense(6, weight_norm=True, name="normed")
    x = tf.random.stateless_normal([4, 3], [1, 2])
    wrapped(x)  # builds it
    kernel, bias = layers.dense_kernel_and_bias(wrapped)
    bias.assign(tf.linspace(-1.0, 1.0, 6))
    y = wrapped(x)
    # g = |v| from the start: the layer begins as the Dense it wraps, initialised as usual.
    np.testing.assert_allclose(kernel, wrapped.v, rtol=1e-6)
    np.testing.assert_allclose(y, x @ kernel + bias, rtol=1e-5)
    # The length of each output unit's weights is g alone; the direction is v's.
    wrapped.v.assign(3.0 * wrapped.v)
    np.testing.assert_allclose(wrapped(x), y, rtol=1e-5)
    wrapped.g.assign(2.0 * wrapped.g)
    np.testing.assert_allclose(wrapped(x) - bias, 2.0 * (y - bias), rtol=1e-5)
    kernel, _ = layers.dense_kernel_and_bias(wrapped)  # what the fused kernels read
    np.testing.assert_allclose(wrapped(x), x @ kernel + bias, rtol=1e-5)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(wrapped(x) ** 2)
    grads = tape.gradient(loss, wrapped.trainable_variables)
    assert [v.name.split("/")[-1] for v in wrapped.trainable_variables] == [
        "g:0",
        "kernel:0",
        "bias:0",
    ]
    assert all(float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)


@pytest.mark.parametrize("tie_embeddings", [False, True])
def test_weight_norm_wraps_the_attention_layer_and_not_the_projection(tie_embeddings):
    seq2seq = _build(weight_norm=True, tie_embeddings=tie_embeddings)
    plain = _build(tie_embeddings=tie_embeddings)
    wrapper = seq2seq.attention_layer
    assert isinstance(wrapper, tfa_lib.WeightNormalization)
    assert type(seq2seq.projection.dense) is tf.keras.layers.Dense
    trainable = {id(v) for v in seq2seq.trainable_variables}
    assert id(wrapper.g) in trainable and id(wrapper.v) in trainable
    assert len(trainable) == len(plain.trainable_variables) + 1  # the wrapper's g
    # Same initial function as the model without it (same seed, g = |v|).
    batch = _inputs()
    np.testing.assert_allclose(seq2seq(batch), plain(batch), rtol=1e-5, atol=1e-6)


def test_weight_norm_is_initialised_in_float32_under_mixed_precision():
    tf.keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        seq2seq = _build(weight_norm=True)
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    wrapper = seq2seq.attention_layer
    assert wrapper.g.dtype == tf.float32
    norms = tf.norm(tf.convert_to_tensor(wrapper.v), axis=0)
    np.testing.assert_allclose(tf.convert_to_tensor(wrapper.g), norms, rtol=1e-6)
    assert seq2seq(_inputs()).dtype == tf.bfloat16


def test_weight_norm_layers_run_in_a_graph_under_mixed_precision():
    """TFA traces its first-call initialisation into every graph call; under mixed precision that
    branch assigned g from a bfloat16 tensor and failed, so training with both did not start."""
    tf.keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        seq2seq = _build(weight_norm=True)
        hidden = tf.random.stateless_normal([2, 16], [0, 5])
        eager = seq2seq.attention_layer(hidden)
        graph = tf.function(seq2seq.attention_layer)(hidden)
        bfloat16 = {"rtol": 2e-2, "atol": 1e-2}  # graph and eager round differently
        np.testing.assert_allclose(
            tf.cast(graph, tf.float32), tf.cast(eager, tf.float32), **bfloat16
        )
        batch = _inputs()
        graph, eager = tf.function(seq2seq)(batch), seq2seq(batch)
        np.testing.assert_allclose(
            tf.cast(graph, tf.float32), tf.cast(eager, tf.float32), **bfloat16
        )
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")


def test_tied_projection_uses_the_target_embedding_matrix():
    seq2seq = _build(tie_embeddings=True)
    hidden = tf.random.stateless_normal([2, 8], [0, 5])
    projection = seq2seq.projection
    projection.bias.assign(tf.range(TARGET_VOCAB, dtype=tf.float32))
    expected = projection.dense(hidden) @ tf.transpose(seq2seq.target_embedding.embeddings)
    np.testing.assert_allclose(
        projection(hidden), expected + tf.range(TARGET_VOCAB, dtype=tf.float32), rtol=1e-5
    )


def test_greedy_decode_alignment_history_covers_every_step():
    seq2seq = _build()
    batch = _inputs()
    ids, _, state = seq2seq.greedy_decode(
        batch["source_ids"], batch["source_lengths"], 4, alignment_history=True
    )
    history = state.alignment_history.stack()
    assert history.shape == (ids.shape[1], 3, 6)
    np.testing.assert_allclose(tf.reduce_sum(history, -1), np.ones([ids.shape[1], 3]), atol=1e-5)
    # No attention on padding.
    assert np.all(history.numpy()[:, 1, 3:] == 0.0)


# Beam search


def _logits_from_bias(seq2seq, bias):
    """Makes the logits equal `bias` at every step, whatever the decoder state."""
    dense = seq2seq.projection.dense
    dense.kernel.assign(tf.zeros_like(dense.kernel))
    dense.bias.assign(bias)


def test_beam_of_one_equals_greedy_decoding():
    seq2seq = _build(seed=6)
    batch = _inputs()
    source, source_lengths = batch["source_ids"], batch["source_lengths"]
    # Sharpen the logits, then raise EOS until sentences stop at different steps.
    dense = seq2seq.projection.dense
    dense.kernel.assign(dense.kernel * 50.0)
    bias = dense.bias.numpy()
    for eos_bias in np.linspace(0.0, 2.0, 21):
        bias[vocab_lib.EOS_ID] = eos_bias
        dense.bias.assign(bias)
        greedy_ids, greedy_lengths, _ = seq2seq.greedy_decode(source, source_lengths, 8)
        if len(set(greedy_lengths.numpy())) > 1:
            break
    else:
        pytest.fail("no EOS bias gave sentences of different lengths")
    # The search itself: `Seq2Seq.beam_search` of width 1 runs greedy search.
    beam_ids, _, beam_lengths = beam_search.beam_search(
        seq2seq, source, source_lengths, 1, 0.0, 0.0, 8
    )
    np.testing.assert_array_equal(beam_lengths[:, 0], greedy_lengths)
    for row, length in enumerate(greedy_lengths.numpy()):
        np.testing.assert_array_equal(beam_ids[row, 0, :length], greedy_ids[row, :length])


def test_length_penalty_divides_scores_by_the_gnmt_penalty():
    """With EOS ruled out every beam has the maximum length L, so each score is the summed log
    probability divided by ((5 + L) / 6) ** weight, and the ranking does not change."""
    seq2seq = _build(seed=6)
    batch = _inputs()
    source, source_lengths = batch["source_ids"], batch["source_lengths"]
    bias = seq2seq.projection.dense.bias
    bias.assign(tf.tensor_scatter_nd_update(bias, [[vocab_lib.EOS_ID]], [-1e4]))
    results = {
        weight: seq2seq.beam_search(
            source, source_lengths, beam_width=3, length_penalty=weight, max_length=5
        )
        for weight in (0.0, 0.6, 1.0)
    }
    plain_ids, plain_scores, plain_lengths = results[0.0]
    np.testing.assert_array_equal(plain_lengths, np.full([3, 3], 5))
    for weight in (0.6, 1.0):
        ids, scores, _ = results[weight]
        np.testing.assert_array_equal(ids, plain_ids)
        penalty = ((5.0 + 5) / 6.0) ** weight
        np.testing.assert_allclose(scores, plain_scores / penalty, rtol=1e-5)
        assert not np.allclose(scores, plain_scores)
    for _, scores, _ in results.values():
        assert np.all(np.diff(scores.numpy(), axis=1) <= 0), "scores must be sorted best-first"


def test_coverage_penalty_applies_to_finished_beams():
    """Logits fixed so EOS and token 5 each have probability 1/2. With beam 2 and two steps, the
    beam that ended at step 0 survives; its score gains weight * sum(log attention of step 0),
    the only attention it accumulated (GNMT coverage penalty as TFA applies it)."""
    seq2seq = _build(seed=7)
    batch = _inputs()
    source, source_lengths = batch["source_ids"][1:2], batch["source_lengths"][1:2]
    bias = np.full([TARGET_VOCAB], -1e4, np.float32)
    bias[[vocab_lib.EOS_ID, 5]] = 0.0
    _logits_from_bias(seq2seq, bias)

    def search(coverage):
        return seq2seq.beam_search(
            source, source_lengths, 2, length_penalty=0.0, coverage_penalty=coverage, max_length=2
        )

    _, plain_scores, _ = search(0.0)
    ids, scores, lengths = search(0.1)
    np.testing.assert_allclose(plain_scores[0], [-math.log(2), -2 * math.log(2)], rtol=1e-5)

    state = seq2seq._encode_for_decoding(source, source_lengths, 1, False)
    start = seq2seq.target_embedding(tf.constant([vocab_lib.BOS_ID]))
    _, step0 = seq2seq.attention_cell(start, state)
    alignment = step0.alignments.numpy()[0, : int(source_lengths[0])]
    coverage = 0.1 * np.sum(np.log(alignment))
    assert coverage < 0
    np.testing.assert_allclose(scores[0, 0], -math.log(2) + coverage, rtol=1e-5)
    np.testing.assert_allclose(scores[0, 1], plain_scores[0, 1], rtol=1e-5)
    assert ids[0, 0, 0] == vocab_lib.EOS_ID and np.all(lengths.numpy() <= 2)


def test_decoding_stops_at_the_configured_max_decode_length():
    seq2seq = _build(seed=8, max_decode_length=4)
    bias = seq2seq.projection.dense.bias
    bias.assign(tf.tensor_scatter_nd_update(bias, [[vocab_lib.EOS_ID]], [-1e4]))
    batch = _inputs()
    ids, lengths, _ = seq2seq.greedy_decode(batch["source_ids"], batch["source_lengths"])
    assert ids.shape == (3, 4)
    np.testing.assert_array_equal(lengths, [4, 4, 4])
    ids, _, lengths = seq2seq.beam_search(batch["source_ids"], batch["source_lengths"])
    assert ids.shape == (3, 2, 4)
    np.testing.assert_array_equal(lengths, np.full([3, 2], 4))
