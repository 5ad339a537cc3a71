"""Scheduled sampling: the schedules, and DenseScheduledSampler against TFA's reference sampler."""

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


_XLA_SCRIPT = textwrap.dedent(
    """
    import dataclasses, json
    import numpy as np
    import tensorflow as tf
    from pipeline import config as config_lib
    from trainer import model

    def inputs(shift, seed, probability):
        return {
            "source_ids": tf.constant([[5, 6, 7, 3, 0], [8, 9, 10, 11, 3]]) + shift,
            "source_lengths": tf.constant([4, 5]),
            "target_in": tf.constant([[2, 5, 6, 7, 0, 0], [2, 5, 6, 7, 8, 9]]) + shift,
            "target_lengths": tf.constant([4, 6]),
            "seed": tf.constant([42, seed]),
            "sampling_probability": tf.constant(probability),
        }

    cfg = config_lib.get_experiment("attention_seq2seq/tiny").model
    cfg = dataclasses.replace(cfg, embedding_dim=6, units=8)
    seq2seq = model.Seq2Seq(cfg, 20, 24)
    seq2seq(inputs(0, 0, 0.5))  # creates the variables, as the trainer does before compiling
    step = tf.function(lambda x: seq2seq(x, training=True), jit_compile=True)

    first = step(inputs(0, 1, 0.5)).numpy()
    other_seed = step(inputs(0, 2, 0.5)).numpy()
    step(inputs(1, 3, 0.9))
    again = step(inputs(0, 1, 0.5)).numpy()
    print(json.dumps({
        "traces": step.experimental_get_tracing_count(),
        "shape": list(first.shape),
        "same_seed_equal": bool(np.array_equal(first, again)),
        "other_seed_differs": not np.allclose(first, other_seed),
    }))
    """
)


def test_model_with_sampling_compiles_once_under_xla():
    """XLA compilations are counted from TF's own log (README, "Known traps": a recompile per
    step is the trap), which needs a fresh process to switch the log on."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0", TF_CPP_VMODULE="device_compiler=1")
    result = subprocess.run(
        [sys.executable, "-c", _XLA_SCRIPT],
        capture_output=True,
        text=True,
        cwd=dataset_fixture.REPO,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    compilations = result.stderr.count("Compilation of XLA executable")
    assert compilations == 1, result.stderr[-3000:]
    assert report == {
        "traces": 1,
        "shape": [2, 6, 24],
        "same_seed_equal": True,
        "other_seed_differs": True,
    }
