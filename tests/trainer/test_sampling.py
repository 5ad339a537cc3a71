"""Scheduled sampling: the schedules; the parallel mode's mixing, draws and gradients; and the
sequential mode's DenseScheduledSampler against TFA's reference sampler."""

import dataclasses
import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from pipeline import config as config_lib
from tests import dataset_fixture
from trainer import model, sampling, tfa_lib

VOCAB = 5
LOGITS = np.array([1.0, 0.0, 2.0, -1.0, 0.5], np.float32)
BATCH, STEPS = 2000, 4


# Schedules


@pytest.mark.parametrize(
    "schedule, cap, k, step, expected",
    [
        ("constant", 0.3, 1000.0, 0, 0.3),
        ("constant", 0.3, 1000.0, 10**6, 0.3),
        ("linear", 0.5, 100.0, 0, 0.0),
        ("linear", 0.5, 100.0, 50, 0.25),
        ("linear", 0.5, 100.0, 100, 0.5),
        ("linear", 0.5, 100.0, 400, 0.5),
        ("exponential", 1.0, 2.0, 0, 0.0),
        ("exponential", 1.0, 2.0, 1, 0.5),
        ("exponential", 1.0, 2.0, 3, 0.875),
        ("exponential", 0.4, 2.0, 1, 0.2),
        ("exponential", 0.4, 2.0, 10**6, 0.4),
        ("inverse_sigmoid", 1.0, 10.0, 0, 1.0 / 11.0),
        ("inverse_sigmoid", 1.0, 10.0, 10.0 * math.log(10.0), 0.5),
        ("inverse_sigmoid", 0.25, 10.0, 10.0 * math.log(10.0), 0.125),
        ("inverse_sigmoid", 0.25, 10.0, 10**7, 0.25),
    ],
)
def test_sampling_probability_at_fixed_steps(schedule, cap, k, step, expected):
    value = sampling.sampling_probability(schedule, tf.constant(step, tf.float64), cap, k)
    assert value.dtype == tf.float32 and value.shape == ()
    assert float(value) == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_sampling_probability_takes_the_int64_optimizer_step():
    step = tf.Variable(50, dtype=tf.int64)
    assert float(sampling.sampling_probability("linear", step, 0.5, 100.0)) == pytest.approx(0.25)


def test_unknown_schedule_is_refused_by_name():
    with pytest.raises(ValueError, match="'cosine'"):
        sampling.sampling_probability("cosine", 0, 0.5, 10.0)


# Samplers, driven step by step with fixed logits


def _embed(ids):
    """Sampled inputs are one-hot rows; the ground-truth inputs below are all negative."""
    return tf.one_hot(ids, VOCAB)


def _truth():
    return -1.0 - tf.random.stateless_uniform([BATCH, STEPS + 1, VOCAB], [5, 6])


def _dense(probability, seed=(11, 12)):
    return sampling.DenseScheduledSampler(_embed, probability, tf.constant(seed, tf.int32))


def _reference(probability):
    tf.keras.utils.set_random_seed(13)
    return tfa_lib.ScheduledEmbeddingTrainingSampler(
        probability, embedding_fn=_embed, seed=14, scheduling_seed=15
    )


def _feed(sampler, logits=LOGITS):
    """Runs `STEPS` steps; returns (fed inputs, ground truth) of those steps as [STEPS*B, V]."""
    truth = _truth()
    sampler.initialize(truth, sequence_length=tf.fill([BATCH], STEPS + 1))
    outputs = tf.tile(tf.constant(logits)[None], [BATCH, 1])
    fed = []
    for time in range(STEPS):
        time = tf.constant(time)
        sample_ids = sampler.sample(time=time, outputs=outputs, state=None)
        _, next_inputs, _ = sampler.next_inputs(time, outputs, None, sample_ids)
        fed.append(next_inputs)
    expected_truth = tf.reshape(tf.transpose(truth[:, 1:], [1, 0, 2]), [-1, VOCAB])
    return tf.concat(fed, 0).numpy(), expected_truth.numpy()


def _split(fed, truth):
    """(mask of positions fed a sample, drawn ids there); checks the rest are the ground truth."""
    sampled = np.all(fed >= 0.0, axis=1)
    np.testing.assert_array_equal(fed[~sampled], truth[~sampled])
    one_hot = fed[sampled]
    np.testing.assert_array_equal(one_hot.sum(axis=1), np.ones(len(one_hot)))
    return sampled, one_hot.argmax(axis=1)


SAMPLERS = {"dense": _dense, "tfa_reference": _reference}


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("probability", [0.0, 0.3, 1.0])
def test_fraction_of_sampled_inputs_is_the_probability(name, probability):
    fed, truth = _feed(SAMPLERS[name](probability))
    sampled, _ = _split(fed, truth)
    n = len(sampled)
    tolerance = 5.0 * math.sqrt(probability * (1.0 - probability) / n)
    assert abs(sampled.mean() - probability) <= tolerance
    if probability == 0.0:
        np.testing.assert_array_equal(fed, truth)


@pytest.mark.parametrize("name", SAMPLERS)
def test_drawn_ids_follow_the_softmax_of_the_logits(name):
    fed, truth = _feed(SAMPLERS[name](1.0))
    _, drawn = _split(fed, truth)
    counts = np.bincount(drawn, minlength=VOCAB)
    expected = len(drawn) * np.exp(LOGITS) / np.exp(LOGITS).sum()
    chi_square = np.sum((counts - expected) ** 2 / expected)
    # 4 degrees of freedom: P(chi2 > 23.5) = 1e-4.
    assert chi_square < 23.5, (counts, expected)


@pytest.mark.parametrize("name", SAMPLERS)
def test_confident_logits_feed_that_ids_embedding(name):
    logits = np.array([0.0, 0.0, 50.0, 0.0, 0.0], np.float32)
    fed, truth = _feed(SAMPLERS[name](0.5), logits)
    sampled, drawn = _split(fed, truth)
    assert 0.4 < sampled.mean() < 0.6
    np.testing.assert_array_equal(drawn, np.full(len(drawn), 2))


def test_dense_sampler_draws_are_a_function_of_seed_and_time():
    first, _ = _feed(_dense(0.5))
    again, _ = _feed(_dense(0.5))
    other_seed, _ = _feed(_dense(0.5, seed=(11, 13)))
    np.testing.assert_array_equal(first, again)
    assert np.mean(np.any(first != other_seed, axis=1)) > 0.2
    by_time = np.all(first >= 0.0, axis=1).reshape(STEPS, BATCH)
    assert np.mean(by_time[0] != by_time[1]) > 0.2, "the coin must change with the time step"


# Parallel mode: draws and mixing


def test_draws_follow_the_softmax_and_each_row_reads_only_its_own_uniform():
    rows = 20000
    logits = tf.tile(tf.constant(LOGITS)[None], [rows, 1])
    uniforms = tf.random.stateless_uniform([rows], [1, 2])
    drawn = sampling.draw_from_logits(logits, uniforms).numpy()
    counts = np.bincount(drawn, minlength=VOCAB)
    expected = rows * np.exp(LOGITS) / np.exp(LOGITS).sum()
    assert np.sum((counts - expected) ** 2 / expected) < 23.5, (counts, expected)
    order = np.random.default_rng(0).permutation(rows)
    shuffled = sampling.draw_from_logits(tf.gather(logits, order), tf.gather(uniforms, order))
    np.testing.assert_array_equal(shuffled, drawn[order])
    extremes = sampling.draw_from_logits(logits[:2], tf.constant([0.0, 1.0 - 1e-7]))
    np.testing.assert_array_equal(extremes, [0, VOCAB - 1])


def test_draws_walk_the_cdf_across_blocks_as_a_plain_inverse_cdf_does():
    rows, vocab = 400, 1000  # 1000 ids: eight blocks, the last one partly padding
    logits = 4.0 * tf.random.stateless_normal([rows, vocab], [3, 4])
    uniforms = tf.random.stateless_uniform([rows], [5, 6])
    drawn = sampling.draw_from_logits(logits, uniforms).numpy()
    probs = tf.nn.softmax(tf.cast(logits, tf.float64)).numpy()
    cdf = np.cumsum(probs, axis=-1)
    u = uniforms.numpy()[:, None]
    expected = np.minimum((cdf <= u).sum(-1), vocab - 1)
    clear = np.min(np.abs(cdf - u), axis=-1) > 1e-5  # not on a boundary, up to rounding
    assert clear.mean() > 0.95 and len(set(expected)) > 50
    np.testing.assert_array_equal(drawn[clear], expected[clear])


MIX_VOCAB = 9


def _encoded_predictions(batch, steps, seed=(3, 4)):
    """Decoder outputs whose projection (the identity) is certain of one id per position."""
    ids = tf.random.stateless_uniform([batch, steps], seed, 4, MIX_VOCAB, tf.int32)
    return ids, 60.0 * tf.one_hot(ids, MIX_VOCAB)


def _mix(probability, target_in, lengths, outputs, rows=None, static=False, step=7):
    return sampling.mix_in_predictions(
        outputs,
        target_in,
        lengths,
        tf.identity,
        tf.constant(probability),
        tf.constant([5, step]),
        rows or sampling.Rows(0, 1),
        static,
    ).numpy()


def _mix_case(batch=64, steps=9):
    target_in = np.full([batch, steps], 1, np.int32)  # 1 never comes out of the predictions
    target_in[:, 0] = 2
    lengths = np.random.default_rng(1).integers(1, steps + 1, batch).astype(np.int32)
    target_in[np.arange(steps)[None, :] >= lengths[:, None]] = 0
    predicted, outputs = _encoded_predictions(batch, steps)
    return tf.constant(target_in), tf.constant(lengths), predicted.numpy(), outputs


@pytest.mark.parametrize("static", [False, True], ids=["gathered", "dense"])
@pytest.mark.parametrize("probability", [0.0, 0.3, 1.0])
def test_mixing_replaces_real_positions_after_bos_with_the_previous_prediction(probability, static):
    target_in, lengths, predicted, outputs = _mix_case()
    mixed = _mix(probability, target_in, lengths, outputs, static=static)
    replaced = mixed != target_in.numpy()
    positions = np.arange(mixed.shape[1])[None, :]
    eligible = (positions >= 1) & (positions < lengths.numpy()[:, None])
    assert not np.any(replaced & ~eligible), "BOS and padding are never replaced"
    # A replaced input is the token predicted one position earlier.
    shifted = np.concatenate([predicted[:, :1], predicted[:, :-1]], axis=1)
    np.testing.assert_array_equal(mixed[replaced], shifted[replaced])
    fraction = replaced[eligible].mean()
    n = eligible.sum()
    assert abs(fraction - probability) <= 5.0 * math.sqrt(probability * (1 - probability) / n)


def test_dense_and_gathered_mixing_agree_and_padding_width_changes_nothing():
    target_in, lengths, _, outputs = _mix_case()
    gathered = _mix(0.5, target_in, lengths, outputs)
    np.testing.assert_array_equal(_mix(0.5, target_in, lengths, outputs, static=True), gathered)
    wider = _mix(
        0.5,
        tf.pad(target_in, [[0, 0], [0, 5]]),
        lengths,
        tf.pad(outputs, [[0, 0], [0, 5], [0, 0]]),
    )
    np.testing.assert_array_equal(wider[:, : gathered.shape[1]], gathered)
    assert not np.array_equal(_mix(0.5, target_in, lengths, outputs, step=8), gathered)


def test_each_replica_mixes_its_rows_as_the_whole_batch_would():
    target_in, lengths, _, outputs = _mix_case(batch=12)
    whole = _mix(0.5, target_in, lengths, outputs)
    rows = [slice(4 * r, 4 * r + 4) for r in range(3)]
    parts = [
        _mix(0.5, target_in[s], lengths[s], outputs[s], rows=sampling.Rows(r, 3))
        for r, s in enumerate(rows)
    ]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


# Inside the model


def _model(**changes):
    tiny = config_lib.get_experiment("attention_seq2seq/tiny").model
    cfg = dataclasses.replace(tiny, embedding_dim=6, units=8, **changes)
    tf.keras.utils.set_random_seed(21)
    return model.Seq2Seq(cfg, 20, 24)


def _inputs():
    return {
        "source_ids": tf.constant([[5, 6, 7, 3, 0], [8, 9, 10, 11, 3]]),
        "source_lengths": tf.constant([4, 5]),
        "target_in": tf.constant([[2, 5, 6, 7, 0, 0], [2, 5, 6, 7, 8, 9]]),
        "target_lengths": tf.constant([4, 6]),
        "seed": tf.constant([42, 7]),
    }


def _real(x, lengths):
    return tf.boolean_mask(x, tf.sequence_mask(lengths, tf.shape(x)[1])).numpy()


def test_model_at_probability_zero_is_teacher_forcing():
    seq2seq = _model()
    inputs = _inputs()
    lengths = inputs["target_lengths"]
    forced = seq2seq.projection(seq2seq(inputs, training=True))
    never = seq2seq(dict(inputs, sampling_probability=tf.constant(0.0)), training=True)
    always = seq2seq(dict(inputs, sampling_probability=tf.constant(1.0)), training=True)
    np.testing.assert_allclose(_real(never, lengths), _real(forced, lengths), atol=1e-5)
    # The first step reads BOS either way; later steps read samples at p=1.
    np.testing.assert_allclose(always[:, 0], forced[:, 0], atol=1e-5)
    assert not np.allclose(_real(always, lengths), _real(forced, lengths), atol=1e-3)


def test_sampling_at_probability_zero_matches_teacher_forcing_with_dropout():
    """With dropout on, the in-loop projection of the sampling path must drop the same units as
    the teacher-forced path (both use one per-sentence mask keyed on the step seed)."""
    seq2seq = _model(dropout=0.3)
    inputs = dict(_inputs(), seed=tf.constant([7, 11]))
    forced = seq2seq.projection(seq2seq(inputs, training=True))
    sampled = seq2seq(dict(inputs, sampling_probability=tf.constant(0.0)), training=True)
    lengths = inputs["target_lengths"].numpy()
    np.testing.assert_allclose(_real(sampled, lengths), _real(forced, lengths), atol=1e-5)
    undropped = seq2seq.projection(seq2seq(inputs, training=False))
    assert not np.allclose(_real(undropped, lengths), _real(forced, lengths), atol=1e-3)


# Gradients where training runs: eagerly, inside tf.function and compiled by XLA.

CONTEXTS = {
    "eager": lambda fn: fn,
    "function": tf.function,
    "xla": lambda fn: tf.function(fn, jit_compile=True),
}


def _built(seq2seq):
    """The model with every variable created, the projection's too."""
    seq2seq(_inputs())
    seq2seq.projection(tf.zeros([1, seq2seq.cfg.units]))
    return seq2seq


def _certain(seq2seq):
    """Scales the projection so far that every draw is its argmax: the fed ids are then the
    same in every context (XLA draws other stateless random numbers than graph mode)."""
    _built(seq2seq)
    kernel = seq2seq.projection.dense.kernel
    kernel.assign(1e5 * kernel)
    return seq2seq


def _weighted(seq2seq, forward, context, dtype=tf.float32, width=8, scale=1.0):
    """forward() and the gradients of a sum weighing each real output differently.

    `scale` < 1 keeps float16 gradients finite through `_certain`'s projection (a unit
    gradient at the logits would overflow on its way back)."""
    weights = scale * tf.random.stateless_normal([2, 6, width], [7, 8])
    mask = tf.sequence_mask(_inputs()["target_lengths"], 6, tf.float32)[:, :, None]

    def run():
        with tf.GradientTape() as tape:
            outputs = forward()
            loss = tf.reduce_sum(tf.cast(outputs, tf.float32) * weights * mask)
        grads = tape.gradient(loss, seq2seq.trainable_variables)
        return outputs, [None if g is None else tf.convert_to_tensor(g) for g in grads]

    outputs, grads = CONTEXTS[context](run)()
    assert outputs.dtype == dtype
    real = _real(tf.cast(outputs, tf.float32), _inputs()["target_lengths"])
    return real, {i: g.numpy() for i, g in enumerate(grads) if g is not None}


def _fed_by_argmax(seq2seq, inputs):
    """The inputs parallel sampling feeds at p = 1 when every draw is the argmax."""
    logits = seq2seq.projection(seq2seq(inputs, training=True))
    predicted = tf.argmax(logits[:, :-1], -1, output_type=tf.int32)
    target_in = inputs["target_in"]
    positions = tf.range(6)[None, :]
    real = (positions >= 1) & (positions < inputs["target_lengths"][:, None])
    return tf.where(real, tf.concat([target_in[:, :1], predicted], 1), target_in)


def _assert_close(ours, theirs, tolerance=1e-5, floor=0.0):
    """Outputs and each gradient agree within `tolerance` of their own largest element (some
    are ~1e-6 at initialisation), or of `floor` times the largest gradient if that is more
    (reduced precision cannot carry the smallest ones)."""
    (our_outputs, our_grads), (their_outputs, their_grads) = ours, theirs
    assert our_grads.keys() == their_grads.keys()
    largest = max(float(np.max(np.abs(g))) for g in their_grads.values())
    pairs = [("outputs", our_outputs, their_outputs)]
    pairs += [(f"gradient {i}", our_grads[i], their_grads[i]) for i in our_grads]
    for name, a, b in pairs:
        scale = max(float(np.max(np.abs(b))), floor * largest)
        assert scale > 0, name
        np.testing.assert_allclose(a / scale, b / scale, atol=tolerance, err_msg=name)


@pytest.mark.parametrize("context", CONTEXTS)
def test_parallel_mode_trains_teacher_forcing_on_the_fed_inputs(context):
    """The fused kernel in `context` against TFA's loop run eagerly on the inputs it was fed:
    same outputs and gradients, and the first pass and projection get no gradient."""
    seq2seq = _certain(_model())
    inputs = _inputs()

    def parallel():
        rows = sampling.Rows(0, 1)
        return sampling.parallel_sampling_outputs(seq2seq, inputs, 1.0, rows, context == "xla")

    ours = _weighted(seq2seq, parallel, context)
    fed = _fed_by_argmax(seq2seq, inputs)
    assert np.mean(fed.numpy() != inputs["target_in"].numpy()) > 0.3
    seq2seq.cfg = dataclasses.replace(seq2seq.cfg, fused_decoder=False)
    theirs = _weighted(
        seq2seq, lambda: seq2seq(dict(inputs, target_in=fed), training=True), "eager"
    )
    names = [v.name for v in seq2seq.trainable_variables]
    assert not any("projection" in names[i] for i in ours[1])
    assert any("memory_layer" in names[i] for i in ours[1])
    _assert_close(ours, theirs)


@pytest.mark.parametrize("context", CONTEXTS)
def test_sequential_mode_at_probability_zero_is_teacher_forcing(context):
    """TFA's sampling loop in `context` against the fused teacher-forced kernel, eagerly."""
    seq2seq = _model()
    seq2seq(_inputs())
    inputs = _inputs()

    def sequential():
        return seq2seq(dict(inputs, sampling_probability=tf.constant(0.0)), training=True)

    ours = _weighted(seq2seq, sequential, context, width=24)
    theirs = _weighted(
        seq2seq, lambda: seq2seq.projection(seq2seq(inputs, training=True)), "eager", width=24
    )
    _assert_close(ours, theirs)


@pytest.mark.parametrize(
    "mode, policy, tolerance",
    [
        (sampling.PARALLEL, "mixed_float16", 0.01),
        (sampling.PARALLEL, "mixed_bfloat16", 0.05),
        (sampling.SEQUENTIAL, "mixed_float16", 0.01),
        # TFA's loop keeps its LSTM states in bfloat16 too (the fused kernels keep float32).
        (sampling.SEQUENTIAL, "mixed_bfloat16", 0.1),
    ],
)
def test_each_mode_trains_in_reduced_precision(mode, policy, tolerance):
    """Outputs and gradients under a mixed policy against float32, from the same weights,
    within `tolerance` of each one's largest element."""

    def run(seq2seq):
        inputs = _inputs()
        if mode == sampling.PARALLEL:
            rows = sampling.Rows(0, 1)
            return sampling.parallel_sampling_outputs(seq2seq, inputs, 1.0, rows, False)
        return seq2seq(dict(inputs, sampling_probability=tf.constant(0.5)), training=True)

    # The sequential mode's gradients pass through the projection; the parallel mode's do not.
    width, scale = (8, 1.0) if mode == sampling.PARALLEL else (24, 1e-3)
    full = _certain(_model())
    theirs = _weighted(full, lambda: run(full), "function", width=width, scale=scale)
    tf.keras.mixed_precision.set_global_policy(policy)
    try:
        low = _built(_model())
        for ours, source in zip(low.variables, full.variables, strict=True):
            ours.assign(source)
        dtype = tf.float16 if policy == "mixed_float16" else tf.bfloat16
        ours = _weighted(low, lambda: run(low), "function", dtype, width, scale)
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    _assert_close(ours, theirs, tolerance, floor=1e-3)


_XLA_SCRIPT = textwrap.dedent(
    """
    import dataclasses, json, sys
    import numpy as np
    import tensorflow as tf
    from pipeline import config as config_lib
    from trainer import task

    def batch(shift):
        return {
            "source_ids": tf.constant([[5, 6, 7, 3, 0], [8, 9, 10, 11, 3]]) + shift,
            "source_lengths": tf.constant([4, 5]),
            "target_in": tf.constant([[2, 5, 6, 7, 0, 0], [2, 5, 6, 7, 8, 9]]) + shift,
            "target_out": tf.constant([[5, 6, 7, 3, 0, 0], [5, 6, 7, 8, 9, 3]]) + shift,
            "target_lengths": tf.constant([4, 6]),
        }

    tiny = config_lib.get_experiment("attention_seq2seq/tiny")
    cfg = dataclasses.replace(
        tiny,
        model=dataclasses.replace(tiny.model, embedding_dim=6, units=8),
        train=dataclasses.replace(
            tiny.train,
            jit_compile=True,
            sampling_mode=sys.argv[1],
            sampling_schedule="linear",
            sampling_probability=0.9,
            sampling_k=10.0,
        ),
    )
    sizes = {"vocab": {"source": {"size": 20}, "target": {"size": 24}}}
    seq2seq = task.build_model(cfg.model, sizes)
    seq2seq(batch(0))  # creates the variables, as the trainer does before compiling
    seq2seq.projection(tf.zeros([1, 8]))
    translation = task.TranslationTask(cfg, seq2seq, None)
    variables = seq2seq.trainable_variables

    @tf.function(jit_compile=True)
    def step(batch, step):
        with tf.GradientTape() as tape:
            loss = translation.loss(batch, step, True)[0]
        return loss, tape.gradient(loss, variables)

    first = step(batch(0), tf.constant(3, tf.int64))[0].numpy()
    other_step = step(batch(0), tf.constant(4, tf.int64))[0].numpy()
    step(batch(1), tf.constant(5, tf.int64))
    again = step(batch(0), tf.constant(3, tf.int64))[0].numpy()
    print(json.dumps({
        "traces": step.experimental_get_tracing_count(),
        "same_step_equal": bool(first == again),
        "other_step_differs": bool(first != other_step),
    }))
    """
)


@pytest.mark.parametrize("mode", [sampling.PARALLEL, sampling.SEQUENTIAL])
def test_each_mode_compiles_once_under_xla(mode):
    """The loss and its gradients, jit-compiled, over steps, seeds and batches of one shape.
    XLA compilations are counted from TF's own log (README, "Known traps": a recompile per
    step is the trap), which needs a fresh process to switch the log on."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0", TF_CPP_VMODULE="device_compiler=1")
    result = subprocess.run(
        [sys.executable, "-c", _XLA_SCRIPT, mode],
        capture_output=True,
        text=True,
        cwd=dataset_fixture.REPO,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    compilations = result.stderr.count("Compilation of XLA executable")
    assert compilations == 1, result.stderr[-3000:]
    assert report == {"traces": 1, "same_step_equal": True, "other_step_differs": True}
