"""The fused greedy and beam search (`trainer/beam_search.py`) against TFA's decoders.

The model is the tiny config with its weights scaled up, so that sentences end at many different
steps (a fresh model ends all at once or never). Two references:
- Every hypothesis' score is recomputed by teacher-forcing it through TFA's `AttentionWrapper`
  (`_teacher_forced_scores`), so the search's scores and its ids belong together.
- TFA's `BeamSearchDecoder` ranks a sentence's finished hypotheses once more with their final
  scores on the step after they end, but not on the last step it runs for the batch; the fused
  search always does (except at `max_length`), so the reference is TFA's decoder run to
  `max_length` (`tfa_beam_search(..., to_max_length=True)`), with its ids backtracked from the
  last step (TFA's own `finalize` would leave them in the order before that last ranking). Ids,
  scores and lengths are then compared beam by beam.
"""

import numpy as np
import pytest
import tensorflow as tf

from pipeline import vocab as vocab_lib
from tests.trainer import test_model_components as components
from trainer import beam_search, decoder_step

MAX_LENGTH = 12


@pytest.fixture(scope="module")
def lively():
    """A model whose beams end anywhere from step 1 to past `MAX_LENGTH`, and 24 sources."""
    return _lively()


def _lively(**changes):
    seq2seq = components._build(seed=1, **changes)
    for variable in seq2seq.trainable_variables:
        variable.assign(variable * 3.0)
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 8, 24)
    ids = rng.integers(4, components.SOURCE_VOCAB, (24, 7))
    ids[np.arange(7)[None] >= lengths[:, None]] = vocab_lib.PAD_ID
    return seq2seq, tf.constant(ids, tf.int32), tf.constant(lengths, tf.int32)


def _hypotheses(ids):
    """Per sentence, the set of its hypotheses, each up to its first EOS (included)."""
    result = []
    for beams in ids.numpy().tolist():
        ended = [
            row[: row.index(vocab_lib.EOS_ID) + 1] if vocab_lib.EOS_ID in row else row
            for row in beams
        ]
        result.append(sorted(tuple(row) for row in ended))
    return result


def _teacher_forced_scores(seq2seq, source_ids, source_lengths, ids, lengths, lp, cp):
    """Each hypothesis' score from its own log-probability and attention, by TFA's cell.

    A hypothesis that ended before the last step has its final score (length with EOS, coverage
    penalty); one that ended on the last step its score from that step (length without EOS, no
    coverage); an unfinished one its log-probability over its length.
    """
    batch, beams, steps = ids.shape
    flat, flat_lengths = tf.reshape(ids, [-1, steps]), tf.reshape(lengths, [-1])
    state = seq2seq._encode_for_decoding(source_ids, source_lengths, beams, False)
    tokens = tf.fill([batch * beams], vocab_lib.BOS_ID)
    log_prob, attention = 0.0, 0.0
    for t in range(steps):
        outputs, state = seq2seq.attention_cell(seq2seq.target_embedding(tokens), state)
        step_log_probs = tf.nn.log_softmax(seq2seq.projection(outputs))
        alive = t < flat_lengths
        picked = tf.gather(step_log_probs, flat[:, t], batch_dims=1)
        log_prob += tf.where(alive, picked, 0.0)
        attention += state.alignments * tf.cast(alive, tf.float32)[:, None]
        tokens = flat[:, t]
    ended = tf.gather(flat, tf.maximum(flat_lengths - 1, 0), batch_dims=1) == vocab_lib.EOS_ID
    on_last_step = tf.logical_and(ended, flat_lengths == MAX_LENGTH)
    length = tf.cast(flat_lengths - tf.cast(on_last_step, tf.int32), tf.float32)
    attention = tf.where(attention == 0.0, 1.0, attention)
    coverage = cp * tf.reduce_sum(tf.math.log(tf.minimum(attention, 1.0)), axis=-1)
    covered = tf.logical_and(ended, tf.logical_not(on_last_step))
    scores = log_prob / ((5.0 + length) / 6.0) ** lp + tf.where(covered, coverage, 0.0)
    return tf.reshape(scores, [batch, beams])


@pytest.mark.parametrize(
    "beam_width, length_penalty, coverage_penalty", [(3, 0.0, 0.0), (4, 0.6, 0.0), (4, 0.6, 0.2)]
)
def test_beam_search_equals_tfa_run_to_max_length(
    lively, beam_width, length_penalty, coverage_penalty
):
    seq2seq, source_ids, source_lengths = lively
    options = (beam_width, length_penalty, coverage_penalty, MAX_LENGTH)
    ids, scores, lengths = _search_as_tfa_does(seq2seq, source_ids, source_lengths, options)
    recomputed = _teacher_forced_scores(
        seq2seq, source_ids, source_lengths, ids, lengths, length_penalty, coverage_penalty
    )
    np.testing.assert_allclose(scores, recomputed, atol=1e-4, rtol=0)
    assert np.all(np.diff(scores.numpy(), axis=1) <= 0), "best first"
    # EOS-filled after each hypothesis, and only as many steps as the longest needed.
    assert ids.shape[2] == lengths.numpy().max()
    after = np.arange(ids.shape[2]) >= lengths.numpy()[..., None]
    assert np.all(ids.numpy()[after] == vocab_lib.EOS_ID)


def test_weight_normalised_model_searches_as_tfa_does():
    """The step reads the attention layer's normalised kernel."""
    seq2seq, source_ids, source_lengths = _lively(weight_norm=True)
    wrapper = seq2seq.attention_layer
    wrapper.g.assign(wrapper.g * tf.linspace(0.5, 1.5, wrapper.g.shape[0]))  # not |v|
    bias = seq2seq.projection.dense.bias  # EOS likelier, so beams end at many steps
    bias.assign(tf.tensor_scatter_nd_add(bias, [[vocab_lib.EOS_ID]], [2.0]))
    options = (4, 0.6, 0.2, MAX_LENGTH)
    ids, scores, lengths = _search_as_tfa_does(seq2seq, source_ids, source_lengths, options)


def test_plain_tfa_differs_only_where_it_ends_the_batch(lively):
    """TFA stops ranking when its whole batch has ended: only those sentences may differ."""
    seq2seq, source_ids, source_lengths = lively
    options = (4, 0.6, 0.0, MAX_LENGTH)
    _, _, lengths = seq2seq.beam_search(source_ids, source_lengths, *options)
    # Sentences that end well before MAX_LENGTH, so TFA's batch ends before it too.
    short = np.flatnonzero(lengths.numpy().max(axis=1) < MAX_LENGTH - 2)
    source_ids, source_lengths = tf.gather(source_ids, short), tf.gather(source_lengths, short)
    ids, scores, lengths = seq2seq.beam_search(source_ids, source_lengths, *options)
    ref_ids, ref_scores, ref_lengths = seq2seq.tfa_beam_search(source_ids, source_lengths, *options)
    ranked_again = ref_lengths.numpy().max(axis=1) < ref_ids.shape[2]
    assert 0 < ranked_again.sum() < len(ranked_again)
    same = np.all(np.isclose(scores, ref_scores, atol=1e-4, rtol=0), axis=1)
    assert np.all(same[ranked_again]) and not np.all(same)
    np.testing.assert_array_equal(
        tf.boolean_mask(ids, ranked_again), tf.boolean_mask(ref_ids, ranked_again)
    )
    assert _hypotheses(ids) == _hypotheses(ref_ids)


def _lengths_from_ids(ids):
    """Each hypothesis' length up to its first EOS (included), or the number of steps."""
    is_eos = ids.numpy() == vocab_lib.EOS_ID
    return np.where(is_eos.any(axis=2), is_eos.argmax(axis=2) + 1, ids.shape[2]).astype(np.int32)


def test_tfa_reference_returns_the_ids_its_scores_belong_to(lively):
    """TFA's `finalize` backtracks each sentence from its longest hypothesis' length, so the
    ranking on the step after (by final scores) reorders its scores and lengths but not its ids;
    `tfa_beam_search` backtracks from the last step, so all three go together."""
    seq2seq, source_ids, source_lengths = lively
    ids, scores, lengths = seq2seq.tfa_beam_search(
        source_ids, source_lengths, 4, 0.6, 0.2, MAX_LENGTH
    )
    np.testing.assert_array_equal(_lengths_from_ids(ids), lengths)
    ranked_again = lengths.numpy().max(axis=1) < ids.shape[2]
    assert ranked_again.sum() >= 4
    recomputed = _teacher_forced_scores(
        seq2seq, source_ids, source_lengths, ids, _lengths_from_ids(ids), 0.6, 0.2
    )
    np.testing.assert_allclose(scores[ranked_again], recomputed[ranked_again], atol=1e-4, rtol=0)


def test_a_sentence_decodes_the_same_alone_and_in_a_batch(lively):
    seq2seq, source_ids, source_lengths = lively
    ids, scores, lengths = seq2seq.beam_search(source_ids, source_lengths, 3, 0.6, 0.1, MAX_LENGTH)
    batch = _hypotheses(ids)
    for row in (0, 5, 17):
        alone = seq2seq.beam_search(
            source_ids[row : row + 1], source_lengths[row : row + 1], 3, 0.6, 0.1, MAX_LENGTH
        )
        assert _hypotheses(alone[0])[0] == batch[row]
        np.testing.assert_allclose(alone[1][0], scores[row], atol=1e-5)


def test_results_do_not_depend_on_the_sentences_in_flight(lively):
    """With `slots`, a sentence that ends hands its place to the next one waiting: every
    sentence still gets what it gets with the whole batch in flight, and ids are as long as the
    longest needed. Graph mode with unknown shapes, as the SavedModel runs it."""
    seq2seq, source_ids, source_lengths = lively
    specs = [tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None], tf.int32)]

    def searches(slots):
        @tf.function(input_signature=specs)
        def search(ids, lengths):
            return beam_search.beam_search(
                seq2seq, ids, lengths, 3, 0.6, 0.2, MAX_LENGTH, slots=slots
            )

        @tf.function(input_signature=specs)
        def greedy(ids, lengths):
            return beam_search.greedy_decode(
                seq2seq, ids, lengths, MAX_LENGTH, log_probs=True, slots=slots
            )

        return search(source_ids, source_lengths), greedy(source_ids, source_lengths)

    (all_ids, all_scores, all_lengths), all_greedy = searches(None)
    assert len(set(all_greedy[1].numpy())) >= 3, "sentences must end at different steps"
    for slots in (1, 7):
        (ids, scores, lengths), greedy = searches(slots)
        np.testing.assert_array_equal(ids, all_ids)
        np.testing.assert_array_equal(lengths, all_lengths)
        np.testing.assert_allclose(scores, all_scores, atol=1e-5, rtol=0)
        np.testing.assert_array_equal(greedy[0], all_greedy[0])
        np.testing.assert_array_equal(greedy[1], all_greedy[1])
        np.testing.assert_allclose(greedy[2], all_greedy[2], atol=1e-5, rtol=0)


def test_an_empty_batch_decodes_to_nothing(lively):
    seq2seq, _, _ = lively
    ids = tf.zeros([0, 5], tf.int32)
    lengths = tf.zeros([0], tf.int32)
    beams = beam_search.beam_search(seq2seq, ids, lengths, 3, 0.6, 0.2, MAX_LENGTH, slots=2)
    greedy = beam_search.greedy_decode(seq2seq, ids, lengths, MAX_LENGTH, slots=2)
    assert [t.shape[0] for t in (*beams, greedy[0], greedy[1])] == [0] * 5


def test_greedy_equals_tfa_greedy(lively):
    seq2seq, source_ids, source_lengths = lively
    ids, lengths, _ = seq2seq.greedy_decode(source_ids, source_lengths, MAX_LENGTH)
    # The alignment history asks for TFA's decoder.
    ref_ids, ref_lengths, _ = seq2seq.greedy_decode(
        source_ids, source_lengths, MAX_LENGTH, alignment_history=True
    )
    assert len(set(lengths.numpy())) >= 3
    np.testing.assert_array_equal(lengths, ref_lengths)
    for row, length in enumerate(lengths.numpy()):
        np.testing.assert_array_equal(ids[row, :length], ref_ids[row, :length])
    # EOS-filled after each sentence's EOS, and only as many steps as the longest needed.
    assert ids.shape[1] == lengths.numpy().max()
    after = np.arange(ids.shape[1]) >= lengths.numpy()[:, None]
    assert np.all(ids.numpy()[after] == vocab_lib.EOS_ID)


def test_width_one_is_greedy_scored_by_its_log_probability(lively):
    seq2seq, source_ids, source_lengths = lively
    ids, scores, lengths = seq2seq.beam_search(source_ids, source_lengths, 1, 0.6, 0.0, MAX_LENGTH)
    greedy_ids, greedy_lengths, _ = seq2seq.greedy_decode(source_ids, source_lengths, MAX_LENGTH)
    np.testing.assert_array_equal(ids[:, 0], greedy_ids)
    np.testing.assert_array_equal(lengths[:, 0], greedy_lengths)
    ended = ids.numpy()[np.arange(24), 0, lengths.numpy()[:, 0] - 1] == vocab_lib.EOS_ID
    assert ended.any() and not ended.all(), "some sentences must run to the maximum length"
    # With no length penalty the teacher-forced score is the summed log-probability.
    log_probs = _teacher_forced_scores(seq2seq, source_ids, source_lengths, ids, lengths, 0, 0)
    penalty = ((5.0 + lengths.numpy()) / 6.0) ** 0.6
    np.testing.assert_allclose(scores * penalty, log_probs, atol=1e-4, rtol=0)


@pytest.mark.parametrize("k", [1, 5])
def test_top_k_by_groups_equals_tensorflows_ties_included(k):
    assert beam_search._group_count(8000, k) == 64
    assert beam_search._group_count(100, k) == 0  # short rows: TensorFlow's own
    rng = np.random.default_rng(k)
    # Few distinct values, so that rows hold many equal logits, also across groups.
    logits = tf.constant(rng.integers(0, 40, (37, 8000)).astype(np.float32))
    logits = tf.concat([logits, tf.fill([1, 8000], 3.0)], axis=0)  # a row of one value
    values, indices = beam_search.top_k(logits, k)
    expected_values, expected_indices = tf.math.top_k(logits, k)
    np.testing.assert_array_equal(values, expected_values)
    np.testing.assert_array_equal(indices, expected_indices)


def test_graph_mode_with_unknown_shapes_matches_eager(lively):
    seq2seq, source_ids, source_lengths = lively
    specs = [tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None], tf.int32)]

    @tf.function(input_signature=specs)
    def search(ids, lengths):
        return seq2seq.beam_search(ids, lengths, 4, 0.6, 0.2, MAX_LENGTH)

    @tf.function(input_signature=specs)
    def greedy(ids, lengths):
        return beam_search.greedy_decode(seq2seq, ids, lengths, MAX_LENGTH, log_probs=True)

    for graph, eager in (
        (
            search(source_ids, source_lengths),
            beam_search.beam_search(seq2seq, source_ids, source_lengths, 4, 0.6, 0.2, MAX_LENGTH),
        ),
        (
            greedy(source_ids, source_lengths),
            beam_search.greedy_decode(
                seq2seq, source_ids, source_lengths, MAX_LENGTH, log_probs=True
            ),
        ),
    ):
        for g, e in zip(graph, eager, strict=True):
            np.testing.assert_allclose(g, e, atol=1e-5)


def test_layer_norm_and_bahdanau_models_keep_tfa_decoding():
    for changes in ({"layer_norm": True}, {"attention": "bahdanau"}):
        seq2seq = components._build(**changes)
        inputs = components._inputs()
        ids, scores, lengths = seq2seq.beam_search(
            inputs["source_ids"], inputs["source_lengths"], 2, 0.6, 0.0, 6
        )
        reference = seq2seq.tfa_beam_search(
            inputs["source_ids"], inputs["source_lengths"], 2, 0.6, 0.0, 6
        )
        assert not decoder_step.supports(seq2seq.cfg)
        for ours, theirs in zip((ids, scores, lengths), reference, strict=True):
            np.testing.assert_array_equal(ours, theirs)


def _search_as_tfa_does(seq2seq, source_ids, source_lengths, options):
    """The fused search's (ids, scores, lengths), checked against TFA's on the same model."""
    ids, scores, lengths = beam_search.beam_search(seq2seq, source_ids, source_lengths, *options)
    ref_ids, ref_scores, ref_lengths = seq2seq.tfa_beam_search(
        source_ids, source_lengths, *options, to_max_length=True
    )
    assert len(set(lengths.numpy().ravel())) >= 4, "the model must end beams at many steps"
    np.testing.assert_allclose(scores, ref_scores, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(lengths, ref_lengths)
    np.testing.assert_array_equal(ids, ref_ids)
    return ids, scores, lengths
