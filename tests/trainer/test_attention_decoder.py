"""The fused teacher-forced decoder against TFA's AttentionWrapper loop on the same weights."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from pipeline import config as config_lib
from tests.trainer.lstm_fixture import accumulating_bias
from trainer import decoder_step, model

SOURCE_VOCAB, TARGET_VOCAB = 20, 24


def _inputs():
    """Four pairs with different source and target lengths (PAD 0, BOS 2, EOS 3)."""
    return {
        "source_ids": tf.constant(
            [[5, 6, 7, 3, 0, 0], [5, 6, 3, 0, 0, 0], [8, 9, 10, 11, 12, 3], [4, 3, 0, 0, 0, 0]]
        ),
        "source_lengths": tf.constant([4, 3, 6, 2]),
        "target_in": tf.constant(
            [[2, 5, 6, 7, 0, 0], [2, 5, 0, 0, 0, 0], [2, 5, 6, 7, 8, 9], [2, 9, 9, 4, 0, 0]]
        ),
        "target_lengths": tf.constant([4, 2, 6, 4]),
    }


def _model(**changes) -> model.Seq2Seq:
    tiny = config_lib.get_experiment("attention_seq2seq/tiny").model
    cfg = dataclasses.replace(tiny, embedding_dim=6, units=8, **changes)
    tf.keras.utils.set_random_seed(3)
    return model.Seq2Seq(cfg, SOURCE_VOCAB, TARGET_VOCAB)


def _build(**changes) -> model.Seq2Seq:
    seq2seq = _model(**changes)
    seq2seq(_inputs())
    # A trained-looking attention scale, so its gradient and the scores' scaling both matter.
    seq2seq.attention.scale_weight.assign(1.7)
    return seq2seq


CONTEXTS = {
    "eager": lambda fn: fn,
    "function": tf.function,
    "xla": lambda fn: tf.function(fn, jit_compile=True),
}


def _run(seq2seq, fused: bool, context: str = "eager"):
    """Outputs at real target positions, and the gradients of a loss weighing each differently,
    computed eagerly, inside a tf.function (where training runs) or compiled by XLA."""
    seq2seq.cfg = dataclasses.replace(seq2seq.cfg, fused_decoder=fused)
    inputs = _inputs()
    mask = tf.sequence_mask(inputs["target_lengths"], 6)
    weights = tf.random.stateless_normal([4, 6, seq2seq.cfg.units], [7, 8])
    variables = seq2seq.trainable_variables

    def run():
        with tf.GradientTape() as tape:
            outputs = seq2seq(inputs, training=True)
            loss = tf.reduce_sum(tf.boolean_mask(outputs * tf.cast(weights, outputs.dtype), mask))
        grads = tape.gradient(loss, variables)
        return outputs, [None if g is None else tf.convert_to_tensor(g) for g in grads]

    outputs, grads = CONTEXTS[context](run)()
    # Keyed by position: variable names repeat (Keras scopes cells built outside a call).
    return tf.boolean_mask(outputs, mask), {i: g for i, g in enumerate(grads) if g is not None}


def _assert_same(seq2seq, ours, theirs, rtol=1e-4, atol=1e-6):
    (our_outputs, our_grads), (their_outputs, their_grads) = ours, theirs
    np.testing.assert_allclose(our_outputs, their_outputs, rtol=10 * rtol, atol=atol)
    # Every decoder-side weight gets a gradient on both paths, and they agree.
    assert our_grads.keys() == their_grads.keys()
    variables = seq2seq.trainable_variables
    names = [variables[i].name for i in our_grads]
    assert any("attention_g" in n for n in names) and any("memory_layer" in n for n in names)
    # Each gradient against its own largest element: the attention scale's and the memory
    # layer's are ~1e-6 at initialisation and would pass any absolute tolerance.
    for i in our_grads:
        scale = float(np.max(np.abs(their_grads[i])))
        assert scale > 0, variables[i].name
        np.testing.assert_allclose(
            our_grads[i] / scale,
            their_grads[i] / scale,
            rtol=rtol,
            atol=atol,
            err_msg=variables[i].name,
        )


@pytest.mark.parametrize(
    "layers,residual_from", [(2, 2), (3, 2), (3, 3), (1, 2)], ids=["2r2", "3r2", "3r3", "1"]
)
def test_fused_decoder_matches_tfa_outputs_and_every_gradient(layers, residual_from):
    seq2seq = _build(decoder_layers=layers, residual_from=residual_from)
    assert seq2seq.uses_fused_decoder()
    _assert_same(seq2seq, _run(seq2seq, fused=True), _run(seq2seq, fused=False))


@pytest.mark.parametrize("context", ["function", "xla"])
def test_fused_decoder_matches_tfa_where_training_runs(context):
    """The kernel traced into a graph and compiled by XLA, against TFA's loop run eagerly."""
    seq2seq = _build(decoder_layers=3, residual_from=2)
    _assert_same(seq2seq, _run(seq2seq, True, context), _run(seq2seq, fused=False))


def test_fused_decoder_matches_tfa_with_weight_norm():
    """The kernel reads the weight-normalised attention kernel; g and v get TFA's gradients."""
    seq2seq = _build(weight_norm=True)
    wrapper = seq2seq.attention_layer
    wrapper.g.assign(wrapper.g * tf.linspace(0.5, 1.5, wrapper.g.shape[0]))  # not just |v|
    ours, theirs = _run(seq2seq, True, "function"), _run(seq2seq, fused=False)
    positions = {id(v): i for i, v in enumerate(seq2seq.trainable_variables)}
    assert positions[id(wrapper.g)] in ours[1] and positions[id(wrapper.v)] in ours[1]
    _assert_same(seq2seq, ours, theirs)


def test_first_pass_forward_equals_the_trained_forward_and_has_no_gradient():
    seq2seq = _build()
    inputs = _inputs()
    start = seq2seq.encode(inputs, training=True)
    target_in, lengths = inputs["target_in"], inputs["target_lengths"]
    with tf.GradientTape(persistent=True) as tape:
        trained = seq2seq.decode(start, target_in, lengths, True)
        first = seq2seq.decode(start, target_in, lengths, True, trainable=False)
    np.testing.assert_array_equal(first, trained)
    variables = seq2seq.trainable_variables
    assert all(g is None for g in tape.gradient(first, variables))
    # The encoder ran outside the tape: the target embedding, 2 x 3 cell weights, the
    # attention scale and the attention layer.
    assert sum(g is not None for g in tape.gradient(trained, variables)) == 9


@pytest.mark.parametrize("policy, tolerance", [("mixed_bfloat16", 0.05), ("mixed_float16", 0.01)])
def test_fused_decoder_matches_in_reduced_precision(policy, tolerance):
    """Both paths in the policy's compute dtype, inside a tf.function."""
    tf.keras.mixed_precision.set_global_policy(policy)
    try:
        seq2seq = _build()
        ours, our_grads = _run(seq2seq, True, "function")
        theirs, their_grads = _run(seq2seq, fused=False)
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    assert ours.dtype == tf.keras.mixed_precision.Policy(policy).compute_dtype
    assert our_grads.keys() == their_grads.keys()
    np.testing.assert_allclose(
        tf.cast(ours, tf.float32), tf.cast(theirs, tf.float32), rtol=tolerance, atol=tolerance / 2
    )
    for i, grad in our_grads.items():
        scale = float(tf.reduce_max(tf.abs(their_grads[i]))) + 1e-3
        np.testing.assert_allclose(grad / scale, their_grads[i] / scale, atol=tolerance)


@pytest.mark.parametrize(
    "policy, weight_norm, tolerance",
    [
        ("float32", False, 1e-5),
        ("float32", True, 1e-5),
        ("mixed_bfloat16", True, 0.02),
        ("mixed_float16", True, 0.01),
    ],
)
def test_decoding_step_reproduces_the_training_kernel(policy, weight_norm, tolerance):
    """Greedy and beam search step the decoder with `decoder_step`: fed the targets, its steps
    give the training kernel's outputs (the same weights, normalised kernel and precision)."""
    tf.keras.mixed_precision.set_global_policy(policy)
    try:
        seq2seq = _build(weight_norm=weight_norm)
        if weight_norm:
            wrapper = seq2seq.attention_layer
            wrapper.g.assign(wrapper.g * tf.linspace(0.5, 1.5, wrapper.g.shape[0]))
        inputs = _inputs()
        trained = seq2seq(inputs)
        memory = decoder_step.encode(seq2seq, inputs["source_ids"], inputs["source_lengths"])
        weights = decoder_step.step_weights(seq2seq, seq2seq.attention_layer.compute_dtype)
        state = decoder_step.initial_state(4, 1, seq2seq)
        stepped = []
        for t in range(6):
            embedded = seq2seq.target_embedding(inputs["target_in"][:, t : t + 1])
            attention, state, _ = decoder_step.step(weights, memory, state, embedded)
            stepped.append(attention[:, 0])
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    assert weights.attention_kernel.dtype == tf.keras.mixed_precision.Policy(policy).compute_dtype
    mask = tf.sequence_mask(inputs["target_lengths"], 6)
    expected = tf.cast(tf.boolean_mask(trained, mask), tf.float32).numpy()
    scale = np.max(np.abs(expected))  # ~0.01: against the outputs' own size
    # The unnormalised kernel (v) is off by ~0.8 of it; bfloat16 rounding by ~0.005.
    np.testing.assert_allclose(
        tf.boolean_mask(tf.stack(stepped, 1), mask) / scale, expected / scale, atol=tolerance
    )


def test_fused_decoder_runs_inside_a_graph_with_unknown_lengths():
    seq2seq = _build()
    spec = {
        k: tf.TensorSpec([None, None] if v.shape.rank == 2 else [None], v.dtype)
        for k, v in _inputs().items()
    }

    @tf.function(input_signature=[spec])
    def loss(inputs):
        return tf.reduce_sum(seq2seq(inputs, training=True))

    eager = float(tf.reduce_sum(seq2seq(_inputs(), training=True)))
    assert float(loss(_inputs())) == pytest.approx(eager, rel=1e-5)


@pytest.mark.parametrize(
    "changes", [{"attention": "bahdanau"}, {"layer_norm": True}, {"fused_decoder": False}]
)
def test_configurations_the_kernel_does_not_cover_use_tfa(changes):
    assert not _model(**changes).uses_fused_decoder()


def test_fused_decoder_keeps_state_in_float32_under_bfloat16():
    """Cells that add 0.003 to their state per step: a bfloat16 state would drift by ~30%."""
    steps, step = 300, 0.003
    tf.keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        seq2seq = _build(decoder_layers=2, residual_from=2)
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    for cell in seq2seq.decoder_cell.cells:
        cell.kernel.assign(tf.zeros_like(cell.kernel))
        cell.recurrent_kernel.assign(tf.zeros_like(cell.recurrent_kernel))
        cell.bias.assign(accumulating_bias(cell.units, step))
    # The attention vector is the query alone: the top layer's h plus the residual below it.
    units = seq2seq.cfg.units
    kernel = seq2seq.attention_layer.kernel
    kernel.assign(tf.concat([tf.eye(units), tf.zeros([kernel.shape[0] - units, units])], 0))
    inputs = _inputs()
    inputs["target_in"] = tf.random.stateless_uniform(
        [4, steps], [9, 9], minval=4, maxval=TARGET_VOCAB, dtype=tf.int32
    )
    inputs["target_lengths"] = tf.fill([4], steps)
    outputs = seq2seq(inputs)
    expected = 2 * np.tanh(step * np.arange(1, steps + 1))
    for row in tf.cast(outputs[:, :, 0], tf.float32):
        np.testing.assert_allclose(row, expected, atol=0.01)
