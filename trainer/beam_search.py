"""Greedy and beam search over `decoder_step`, with TFA's `BeamSearchDecoder` scoring.

What makes it fast, against TFA's decoder on the same weights:
- The output projection, softmax and top-k run only on hypotheses still going: not on finished
  beams, not on the copies of the first beam at step 0. Each live beam proposes its k best
  tokens other than EOS plus EOS itself (EOS is the one token whose length, and so whose length
  penalty, differs), so the top-k over k(k + 1) candidates per sentence is the top-k over k * V.
- A sentence whose beams have all ended leaves the loop state at once (its results are written
  out), so later steps run on the sentences still being translated, and the loop stops when
  none is left.
- With `slots`, at most that many sentences are in flight: a sentence that ends hands its rows
  to the next one waiting, so the steps run full instead of dwindling to the batch's longest
  translation (continuous batching). The encoder runs once for all of them.

The scores are TFA's (GNMT): log probability / ((5 + length) / 6) ** length_penalty, plus, for
finished hypotheses, coverage_penalty * sum(log(min(accumulated attention, 1))) over source
positions with any attention. A hypothesis' length counts EOS once it has ended but not in the
step that emits it, and a finished hypothesis competes with its later (EOS-inclusive) score and
coverage, as in TFA. When a sentence ends, its hypotheses are ranked once more with those final
scores, as TFA's next step does; TFA skips that re-ranking for the sentences ending on the last
step it runs for their batch, so its results depend on which sentences share a batch, while
these do not (see README, "Translate and serve", for the measured agreement).
"""

import math
from typing import NamedTuple

import tensorflow as tf

from pipeline import vocab as vocab_lib
from trainer import decoder_step

EOS = vocab_lib.EOS_ID
_FLOAT = tf.float32


class _Beams(NamedTuple):
    """The loop state of the sentences still being translated, [b, k, ...]."""

    rows: object  # [b] the sentences' rows in the batch
    positions: object  # [b] steps each sentence has run
    tokens: object  # [b, k] the last token of each hypothesis
    log_probs: object  # [b, k] summed log probabilities
    scores: object  # [b, k] scores as last ranked
    lengths: object  # [b, k] pieces so far, EOS included once ended
    finished: object  # [b, k]
    sequences: object  # [b, k, max_length] pieces so far, EOS-filled
    coverage: object  # [b, k, S] accumulated attention ([b, k, 0] without coverage penalty)
    state: decoder_step.State
    memory: decoder_step.Memory


class _Options(NamedTuple):
    beam_width: int
    length_weight: float
    coverage_weight: float


class _Results(NamedTuple):
    """The finished output for the whole batch, filled in as sentences end."""

    ids: object  # [B, k, max_length]
    scores: object  # [B, k]
    lengths: object  # [B, k]


def length_penalty(lengths, weight: float):
    """GNMT's ((5 + length) / 6) ** weight (1 when the weight is 0)."""
    if weight == 0.0:
        return tf.ones_like(lengths, _FLOAT)
    return (5.0 + tf.cast(lengths, _FLOAT)) ** weight / 6.0**weight


def coverage_penalty(coverage, weight: float):
    """weight * sum(log(min(attention, 1))) over positions with any attention, per hypothesis."""
    if weight == 0.0:
        return tf.zeros(tf.shape(coverage)[:2], _FLOAT)
    attended = tf.where(coverage == 0.0, tf.ones_like(coverage), coverage)
    return weight * tf.reduce_sum(tf.math.log(tf.minimum(attended, 1.0)), axis=-1)


def _group_count(vocab_size: int, k: int) -> int:
    """How many groups `top_k` splits a row of `vocab_size` into; 0 for a plain `tf.math.top_k`.

    A divisor of the vocabulary (so rows reshape without a copy) near sqrt(vocabulary / 2): 64
    for 8,000, the fastest of 32, 64 and 128 measured there. Short rows take the plain top-k.
    """
    if vocab_size < 1024:
        return 0
    target = math.sqrt(vocab_size / 2)
    divisors = [
        d for d in range(max(k, int(target / 2)), int(target * 2) + 1) if vocab_size % d == 0
    ]
    return min(divisors, key=lambda d: abs(math.log(d / target)), default=0)


def top_k(logits, k: int):
    """`tf.math.top_k(logits, k)` of [n, V] rows, found through groups of the vocabulary.

    TensorFlow's CPU TopK takes ~3.5 ms on [128, 8,000] float32 rows, a third of a beam-search
    step. A row's k best lie in the k groups with the largest maxima, so one max-reduction over
    [n, G, V / G], a top-k over the G maxima and one over those k groups' logits find them in
    ~0.9 ms. Equal values come out as `tf.math.top_k` gives them, lowest index first: the k
    groups are taken lowest first among equal maxima and searched in vocabulary order.
    """
    vocab_size = logits.shape[-1]
    groups = _group_count(vocab_size, k)
    if not groups:
        return tf.math.top_k(logits, k)
    size = vocab_size // groups
    rows = tf.shape(logits)[0]
    grouped = tf.reshape(logits, [rows, groups, size])
    _, best_groups = tf.math.top_k(tf.reduce_max(grouped, axis=2), k)
    best_groups = tf.sort(best_groups, axis=1)
    candidates = tf.reshape(tf.gather(grouped, best_groups, batch_dims=1), [rows, k * size])
    values, positions = tf.math.top_k(candidates, k)
    group = tf.gather(best_groups, positions // size, batch_dims=1)
    return values, group * size + positions % size


def _log_softmax_at_max(logits, best):
    """`tf.nn.log_softmax(logits)` at each row's maximum, whose position is `best` ([n, 1]),
    without the [n, V] output: the log of the softmax there, 1 / sum(exp(x - max)).

    TensorFlow's CPU softmax (oneDNN) forms that sum in one pass, about twice as fast as exp
    and sum as separate ops over [n, 8,000] rows, the largest cost of a search step after the
    matrix products; the result differs from log_softmax's by rounding (~1e-7).
    """
    return tf.math.log(tf.gather(tf.nn.softmax(logits), best, batch_dims=1))


def _log_softmax_at(logits, row_max, best, chosen):
    """`tf.nn.log_softmax(logits)` at the `chosen` logits of each row ([n, c]), given each
    row's maximum `row_max` and its position `best` ([n, 1]):
    log_softmax(x)_j = (x_j - max) + log_softmax(x)_max."""
    return (chosen - row_max) + _log_softmax_at_max(logits, best)


def _live_proposals(project, attention, live, beam_width: int):
    """Per live hypothesis: EOS and the `beam_width` best other tokens, as (log-probs, tokens)
    [n, k + 1], and the hypotheses' flat index. The projection runs on live rows only.

    Taking k + 1 and dropping EOS (or the last, when EOS is not among them) leaves exactly k.
    """
    width = tf.shape(attention)[-1]
    index = tf.cast(tf.where(tf.reshape(live, [-1]))[:, 0], tf.int32)
    rows = tf.gather(tf.reshape(attention, [-1, width]), index)
    logits = tf.cast(project(rows), _FLOAT)
    values, tokens = top_k(logits, beam_width + 1)
    row_max, best = values[:, :1], tokens[:, :1]
    is_eos = tokens == EOS
    keep = tf.logical_and(
        tf.logical_not(is_eos),
        tf.logical_or(
            tf.range(beam_width + 1) < beam_width, tf.reduce_any(is_eos, 1, keepdims=True)
        ),
    )
    values = tf.reshape(tf.boolean_mask(values, keep), [-1, beam_width])
    tokens = tf.reshape(tf.boolean_mask(tokens, keep), [-1, beam_width])
    eos_column = tf.fill([tf.shape(tokens)[0], 1], EOS)
    chosen = tf.concat([logits[:, EOS : EOS + 1], values], axis=1)
    return (
        _log_softmax_at(logits, row_max, best, chosen),
        tf.concat([eos_column, tokens], axis=1),
        index,
    )


def _candidates(project, finished, attention, beam_width: int):
    """Every beam's proposals: (step log-probs, tokens), [b, k, k + 1].

    A finished beam proposes EOS at no cost and nothing else (TFA's masked distribution).
    """
    shape = tf.shape(finished)
    rows = shape[0] * shape[1]
    step_log_probs = tf.concat(
        [tf.zeros([rows, 1], _FLOAT), tf.fill([rows, beam_width], _FLOAT.min)], axis=1
    )
    tokens = tf.fill([rows, beam_width + 1], EOS)
    live_values, live_tokens, index = _live_proposals(
        project, attention, tf.logical_not(finished), beam_width
    )
    step_log_probs = tf.tensor_scatter_nd_update(step_log_probs, index[:, None], live_values)
    tokens = tf.tensor_scatter_nd_update(tokens, index[:, None], live_tokens)
    new_shape = tf.concat([shape, [beam_width + 1]], axis=0)
    return tf.reshape(step_log_probs, new_shape), tf.reshape(tokens, new_shape)


def _advance(beams: _Beams, step_log_probs, tokens, alignment, options: _Options):
    """Ranks the candidates and keeps the best k per sentence (TFA's `_beam_search_step`)."""
    beam_width, length_weight, coverage_weight = options
    running = tf.logical_not(beams.finished)
    total = beams.log_probs[:, :, None] + step_log_probs
    # EOS (column 0) does not add to the length of the hypothesis it ends.
    grows = tf.concat([tf.zeros([1], tf.int32), tf.ones([beam_width], tf.int32)], axis=0)
    lengths = beams.lengths[:, :, None] + tf.cast(running, tf.int32)[:, :, None] * grows
    coverage = beams.coverage
    if coverage_weight:
        coverage += alignment * tf.cast(running, _FLOAT)[:, :, None]
    penalty = coverage_penalty(coverage, coverage_weight) * tf.cast(beams.finished, _FLOAT)
    scores = total / length_penalty(lengths, length_weight) + penalty[:, :, None]
    batch = tf.shape(total)[0]
    scores, best = tf.math.top_k(tf.reshape(scores, [batch, -1]), beam_width)
    parents = best // (beam_width + 1)
    new_tokens = tf.gather(tf.reshape(tokens, [batch, -1]), best, batch_dims=1)
    parent_finished = tf.gather(beams.finished, parents, batch_dims=1)
    sequences = tf.gather(beams.sequences, parents, batch_dims=1)
    at_t = tf.one_hot(beams.positions, tf.shape(sequences)[2], on_value=True, off_value=False)
    return beams._replace(
        tokens=new_tokens,
        log_probs=tf.gather(tf.reshape(total, [batch, -1]), best, batch_dims=1),
        scores=scores,
        lengths=tf.gather(beams.lengths, parents, batch_dims=1)
        + tf.cast(tf.logical_not(parent_finished), tf.int32),
        finished=tf.logical_or(parent_finished, tf.equal(new_tokens, EOS)),
        sequences=tf.where(at_t[:, None], new_tokens[:, :, None], sequences),
        coverage=tf.gather(coverage, parents, batch_dims=1),
        state=decoder_step.gather(beams.state, parents, batch_dims=1),
        positions=beams.positions + 1,
    )


def _rerank(beams: _Beams, options: _Options):
    """All hypotheses finished: ranked by their final scores, as TFA's next step ranks them."""
    scores = beams.log_probs / length_penalty(beams.lengths, options.length_weight)
    scores += coverage_penalty(beams.coverage, options.coverage_weight)
    scores, order = tf.math.top_k(scores, tf.shape(scores)[1])
    return beams._replace(
        scores=scores,
        lengths=tf.gather(beams.lengths, order, batch_dims=1),
        sequences=tf.gather(beams.sequences, order, batch_dims=1),
    )


def _write(results: _Results, beams: _Beams, which) -> _Results:
    """Copies the sentences selected by `which` [b] into the batch's results."""
    rows = tf.boolean_mask(beams.rows, which)[:, None]
    return _Results(
        ids=tf.tensor_scatter_nd_update(results.ids, rows, tf.boolean_mask(beams.sequences, which)),
        scores=tf.tensor_scatter_nd_update(
            results.scores, rows, tf.boolean_mask(beams.scores, which)
        ),
        lengths=tf.tensor_scatter_nd_update(
            results.lengths, rows, tf.boolean_mask(beams.lengths, which)
        ),
    )


class _Queue(NamedTuple):
    """The sentences waiting for a slot: rows `next_row` .. `total` - 1 of the batch."""

    next_row: object  # int32 scalar, a loop variable
    total: object  # int32 scalar: the batch's sentences
    slots: object  # int32 scalar: most sentences in flight at once


def _queue(source_ids, slots) -> _Queue:
    """The queue before the first step: every sentence waits; `slots` None lets all in."""
    total = tf.shape(source_ids)[0]
    return _Queue(tf.constant(0), total, total if slots is None else tf.convert_to_tensor(slots))


def _with_memory(flight, memory: decoder_step.Memory):
    """`flight` with its rows of the batch's encoded `memory`, in one gather: the largest part
    of the state ([b, S, U] keys and values), gathered once for the rows in flight rather than
    kept rows gathered and then joined."""
    return flight._replace(memory=decoder_step.gather(memory, flight.rows, batch_dims=0))


def _first(queued: _Queue, fresh, memory: decoder_step.Memory):
    """The flight before the first step and the next waiting row: the first `slots` sentences."""
    count = tf.minimum(queued.slots, queued.total)
    return _with_memory(fresh(tf.range(count)), memory), count


def _refill(flight, going, queued: _Queue, fresh, memory: decoder_step.Memory):
    """The loop state without the sentences not `going`, topped up from the queue: a gather
    and a concatenation only on steps where a sentence left (not a copy of every state and
    memory each step).

    Args:
      flight: a loop state (`_Beams` or `_Greedy`) whose every tensor is [b, ...].
      going: [b] bool, the sentences that stay.
      queued: the sentences not yet started.
      fresh: rows [n] -> the loop state of those sentences before their first step, without
        their memory.
      memory: the whole batch's encoded memory, whose `flight.rows` the flight holds.

    Returns:
      (the new loop state, the new `queued.next_row`).
    """

    def refill():
        keep = tf.cast(tf.where(going)[:, 0], tf.int32)
        kept = tf.nest.map_structure(lambda x: tf.gather(x, keep), flight._replace(memory=()))
        count = tf.maximum(
            tf.minimum(queued.slots - tf.size(keep), queued.total - queued.next_row), 0
        )
        added = fresh(tf.range(queued.next_row, queued.next_row + count))
        joined = tf.nest.map_structure(lambda a, b: tf.concat([a, b], axis=0), kept, added)
        return _with_memory(joined, memory), queued.next_row + count

    return tf.cond(tf.reduce_all(going), lambda: (flight, queued.next_row), refill)


def _fresh_beams(
    seq2seq, memory: decoder_step.Memory, beam_width: int, max_length: int, coverage: bool
):
    """rows -> the loop state of those sentences before their first step: one live beam per
    sentence, the rest empty; their memory is left out (`_with_memory`), `memory` gives the
    coverage's source width."""
    first = tf.range(beam_width) == 0
    source_width = tf.shape(memory.values)[1] if coverage else 0

    def fresh(rows):
        batch = tf.size(rows)
        # As in TFA: the other beams start finished with log-probability -inf, so step 0
        # expands the first beam only.
        finished = tf.tile(tf.logical_not(first)[None], [batch, 1])
        log_probs = tf.where(finished, -float("inf"), 0.0)
        return _Beams(
            rows=rows,
            positions=tf.zeros([batch], tf.int32),
            tokens=tf.fill([batch, beam_width], vocab_lib.BOS_ID),
            log_probs=log_probs,
            scores=log_probs,
            lengths=tf.zeros([batch, beam_width], tf.int32),
            finished=finished,
            sequences=tf.fill([batch, beam_width, max_length], EOS),
            coverage=tf.zeros([batch, beam_width, source_width], _FLOAT),
            state=decoder_step.initial_state(batch, beam_width, seq2seq),
            memory=(),
        )

    return fresh


def _loose(flight):
    """`tf.while_loop` shape invariants of a loop state whose sentences come and go."""
    loose = tf.nest.map_structure(lambda t: tf.TensorShape([None, *t.shape[1:]]), flight)
    return loose._replace(memory=decoder_step.memory_invariants(flight.memory))


def _retire(beams: _Beams, results: _Results, options: _Options, max_length: int):
    """Writes out the sentences whose beams have all ended (ranked once more by their final
    scores) and those that reached `max_length` (as they are: on the last step TFA ranks
    nothing again), and says which stay."""
    at_limit = beams.positions >= max_length
    ended = tf.logical_and(tf.reduce_all(beams.finished, axis=1), tf.logical_not(at_limit))
    leaving = tf.logical_or(ended, at_limit)

    def write():
        written = _write(results, _rerank(beams, options), ended)
        return _write(written, beams, at_limit)

    results = tf.cond(tf.reduce_any(leaving), write, lambda: results)
    return results, tf.logical_not(leaving)


def beam_search(
    seq2seq,
    source_ids,
    source_lengths,
    beam_width: int,
    length_penalty_weight: float,
    coverage_penalty_weight: float,
    max_length: int,
    slots=None,
):
    """Beam search: (ids [B, k, T], scores [B, k], lengths [B, k]), best first.

    The same contract as TFA's `BeamSearchDecoder` under `model.Seq2Seq.beam_search`: ids are
    EOS-filled after each hypothesis ends, T is the most steps any sentence ran, lengths count
    EOS. Results do not depend on `slots`.

    Args:
      seq2seq: a `model.Seq2Seq` for which `decoder_step.supports(seq2seq.cfg)`.
      source_ids, source_lengths: [B, S] and [B] int32.
      beam_width, length_penalty_weight, coverage_penalty_weight, max_length: Python numbers.
      slots: most sentences decoded at once (each with `beam_width` hypotheses), the others
        waiting for one to end; None: all B.
    """
    options = _Options(beam_width, float(length_penalty_weight), float(coverage_penalty_weight))
    weights = decoder_step.step_weights(seq2seq, seq2seq.attention_layer.compute_dtype)
    project = seq2seq.projection.precast()
    memory = decoder_step.encode(seq2seq, source_ids, source_lengths)
    fresh = _fresh_beams(seq2seq, memory, beam_width, max_length, bool(options.coverage_weight))
    queued = _queue(source_ids, slots)
    beams, next_row = _first(queued, fresh, memory)
    batch = queued.total
    results = _Results(
        ids=tf.fill([batch, beam_width, max_length], EOS),
        scores=tf.zeros([batch, beam_width], _FLOAT),
        lengths=tf.zeros([batch, beam_width], tf.int32),
    )

    def body(longest, next_row, beams, results):
        embedded = seq2seq.target_embedding(beams.tokens)
        attention, state, alignment = decoder_step.step(
            weights, beams.memory, beams.state, embedded
        )
        beams = beams._replace(state=state)
        step_log_probs, tokens = _candidates(project, beams.finished, attention, beam_width)
        beams = _advance(beams, step_log_probs, tokens, alignment, options)
        longest = tf.maximum(longest, tf.reduce_max(beams.positions))
        results, going = _retire(beams, results, options, max_length)
        beams, next_row = _refill(beams, going, queued._replace(next_row=next_row), fresh, memory)
        return longest, next_row, beams, results

    longest, _, _, results = tf.while_loop(
        lambda _, __, beams, ___: tf.size(beams.rows) > 0,
        body,
        (tf.constant(0), next_row, beams, results),
        shape_invariants=(
            tf.TensorShape([]),
            tf.TensorShape([]),
            _loose(beams),
            tf.nest.map_structure(lambda t: t.shape, results),
        ),
    )
    return results.ids[:, :, :longest], results.scores, results.lengths


class _Greedy(NamedTuple):
    """The greedy loop state of the sentences in flight."""

    rows: object  # [b] the sentences' rows in the batch
    positions: object  # [b] steps each sentence has run
    tokens: object  # [b, 1] the last token
    state: decoder_step.State
    memory: decoder_step.Memory


def _fresh_greedy(seq2seq):
    """rows -> the greedy loop state of those sentences before their first step, without their
    memory (`_with_memory`)."""

    def fresh(rows):
        batch = tf.size(rows)
        return _Greedy(
            rows=rows,
            positions=tf.zeros([batch], tf.int32),
            tokens=tf.fill([batch, 1], vocab_lib.BOS_ID),
            state=decoder_step.initial_state(batch, 1, seq2seq),
            memory=(),
        )

    return fresh


def greedy_decode(
    seq2seq, source_ids, source_lengths, max_length: int, log_probs: bool = False, slots=None
):
    """Greedy translation: (ids [B, T], lengths [B], summed log-probabilities [B] or None).

    TFA's `BasicDecoder` with `GreedyEmbeddingSampler` takes the same choices (argmax of the
    logits); a sentence leaves the loop at its EOS, and with `slots` (most sentences at once;
    None: all B) the next waiting sentence takes its place. Each step writes one token per
    sentence in flight into [B, max_length] EOS-filled ids. With `log_probs`, each step also
    adds the chosen token's log-probability (EOS's included), which costs one pass over the
    step's logits more.
    """
    weights = decoder_step.step_weights(seq2seq, seq2seq.attention_layer.compute_dtype)
    project = seq2seq.projection.precast()
    memory = decoder_step.encode(seq2seq, source_ids, source_lengths)
    fresh = _fresh_greedy(seq2seq)
    queued = _queue(source_ids, slots)
    greedy, next_row = _first(queued, fresh, memory)
    batch = queued.total
    ids = tf.fill([batch, max_length], EOS)
    summed = tf.zeros([batch], _FLOAT)

    def body(next_row, greedy, ids, summed):
        embedded = seq2seq.target_embedding(greedy.tokens)
        attention, state, _ = decoder_step.step(weights, greedy.memory, greedy.state, embedded)
        logits = tf.cast(project(attention[:, 0]), _FLOAT)
        # The argmax through the vocabulary's groups (`top_k`): the lowest index among equal
        # logits, as TFA's greedy sampler's argmax takes it, in about half the time of
        # `tf.argmax` over [32, 8,000] rows (one thread, a loop timed alone).
        tokens = top_k(logits, 1)[1][:, 0]
        at = tf.stack([greedy.rows, greedy.positions], axis=1)
        ids = tf.tensor_scatter_nd_update(ids, at, tokens)
        if log_probs:
            # The argmax is the row's maximum: its log-probability needs no max pass.
            scored = _log_softmax_at_max(logits, tokens[:, None])[:, 0]
            summed = tf.tensor_scatter_nd_add(summed, greedy.rows[:, None], scored)
        greedy = greedy._replace(
            tokens=tokens[:, None], state=state, positions=greedy.positions + 1
        )
        going = tf.logical_and(tf.not_equal(tokens, EOS), greedy.positions < max_length)
        greedy, next_row = _refill(greedy, going, queued._replace(next_row=next_row), fresh, memory)
        return next_row, greedy, ids, summed

    _, _, ids, summed = tf.while_loop(
        lambda _, greedy, *__: tf.size(greedy.rows) > 0,
        body,
        (next_row, greedy, ids, summed),
        shape_invariants=(tf.TensorShape([]), _loose(greedy), ids.shape, summed.shape),
    )
    is_eos = tf.equal(ids, EOS)
    # A sentence that never ended ran to `max_length`.
    ended_at = tf.argmax(tf.cast(is_eos, tf.int32), axis=1, output_type=tf.int32) + 1
    lengths = tf.where(tf.reduce_any(is_eos, axis=1), ended_at, max_length)
    longest = tf.reduce_max(tf.concat([lengths, [0]], axis=0))
    return ids[:, :longest], lengths, summed if log_probs else None
