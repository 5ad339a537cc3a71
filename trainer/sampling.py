"""Scheduled sampling: the schedules, and the two ways of feeding the model its own predictions.

- Parallel (Duckworth et al., 2019, "Parallel Scheduled Sampling"; Mihaylova & Martins, 2019):
  a teacher-forced pass without gradient gives the model's prediction at every position; each
  input position after BOS is replaced, with the schedule's probability, by a draw from the
  prediction made one position earlier; the trained pass is teacher forcing on those mixed
  inputs. Both passes run the fused decoder (`attention_decoder`), and only the trained pass
  has a backward pass. A prediction is conditioned on the reference prefix, not on earlier
  draws: the price of keeping the kernels.
- Sequential (Bengio et al., 2015): TFA's `BasicDecoder` loop, each step fed a draw from the
  previous step's own output (`DenseScheduledSampler`), the projection inside the loop.

Both draw the fed token from the model's softmax, as TFA's reference sampler and Bengio et al.
do, rather than take its argmax: a draw feeds the model the errors it actually makes at their
rate, where the argmax would always feed its single most likely (often frequent, short) token.

Both select with dense masks, so every tensor keeps a static shape and XLA compiles them (TFA's
`ScheduledEmbeddingTrainingSampler` gathers and scatters the sampled positions; README, "Known
traps"). Randomness is stateless and keyed on (seed, step): a resumed run draws exactly what the
uninterrupted run would have drawn. The parallel mode also keys each draw on the row's position
in the global batch, so its draws do not depend on how many replicas share the batch.
"""

import math
from typing import NamedTuple

import tensorflow as tf

from trainer import layers, tfa_lib

PARALLEL, SEQUENTIAL = "parallel", "sequential"


def sampling_probability(schedule: str, step, cap: float, k: float) -> tf.Tensor:
    """Probability of feeding the model's own sample at `step` (OpenNMT-tf's schedules).

    Args:
      schedule: 'constant' (always `cap`), 'linear' (0 -> cap over k steps), 'exponential'
        (1 - k**-step), or 'inverse_sigmoid' (1 - k / (k + exp(step / k))).
      step: the global step (checkpointed, so the schedule resumes exactly).
      cap: the constant probability, or the ceiling of the other schedules.
      k: the schedule's speed.

    Returns:
      A float32 scalar in [0, cap].
    """
    step = tf.cast(step, tf.float32)
    if schedule == "constant":
        return tf.constant(cap, tf.float32)
    if schedule == "linear":
        value = step / k
    elif schedule == "exponential":
        value = 1.0 - tf.pow(tf.constant(k, tf.float32), -step)
    elif schedule == "inverse_sigmoid":
        value = 1.0 - k / (k + tf.exp(tf.minimum(step / k, math.log(1e30))))
    else:
        raise ValueError(f"Unknown sampling schedule {schedule!r}.")
    return tf.clip_by_value(value, 0.0, 1.0) * cap


class Rows(NamedTuple):
    """Where a replica's rows sit in the global batch: rows [offset, offset + B) of B * count."""

    offset: tf.Tensor | int
    count: tf.Tensor | int  # replicas sharing the global batch


def replica_rows() -> Rows:
    """This replica's `Rows` (replica r of R holds the r-th slice of every global batch)."""
    context = tf.distribute.get_replica_context()
    if context is None:  # cross-replica context: the whole batch
        return Rows(0, 1)
    return Rows(context.replica_id_in_sync_group, context.num_replicas_in_sync)


def _uniforms(seed, rows: Rows, batch, steps):
    """Two [batch, steps] uniforms (coin, draw) for this replica's rows of the global batch.

    Drawn time-major: a stateless draw of a longer shape starts with the values of a shorter
    one, so a position's uniforms do not depend on how far the batch is padded.
    """
    everything = tf.random.stateless_uniform([steps, 2, rows.count * batch], seed)
    start = rows.offset * batch
    mine = tf.transpose(everything[:, :, start : start + batch], [1, 2, 0])
    return mine[0], mine[1]


_DRAW_BLOCK = 128


def draw_from_logits(logits, uniforms):
    """Ids drawn from softmax(logits) [N, V] by inverting its CDF at `uniforms` [N].

    One uniform per row, unlike `tf.random.stateless_categorical`, so a row's draw does not
    depend on which other rows are drawn with it (see `mix_in_predictions`). The CDF is walked
    in two levels, over blocks of `_DRAW_BLOCK` ids, then inside the chosen block: a cumulative
    sum over all 8k ids of every row costs more than the projection that made the logits.
    """
    logits = tf.cast(logits, tf.float32)
    rows, vocab = tf.shape(logits)[0], tf.shape(logits)[1]
    weights = tf.exp(logits - tf.reduce_max(logits, axis=-1, keepdims=True))
    blocks = (vocab + _DRAW_BLOCK - 1) // _DRAW_BLOCK
    weights = tf.pad(weights, [[0, 0], [0, blocks * _DRAW_BLOCK - vocab]])
    weights = tf.reshape(weights, [rows, blocks, _DRAW_BLOCK])
    block_sums = tf.reduce_sum(weights, axis=-1)
    block_cdf = tf.cumsum(block_sums, axis=-1)  # [N, blocks]
    threshold = uniforms * block_cdf[:, -1]
    block = _count_below(block_cdf, threshold, blocks - 1)
    before = tf.gather(block_cdf - block_sums, block, batch_dims=1)  # the mass of earlier blocks
    inside = before[:, None] + tf.cumsum(tf.gather(weights, block, batch_dims=1), axis=-1)
    index = block * _DRAW_BLOCK + _count_below(inside, threshold, _DRAW_BLOCK - 1)
    return tf.minimum(index, vocab - 1)


def _count_below(cdf, threshold, largest):
    """Per row, how many entries of `cdf` are <= `threshold`: the index the CDF passes it at
    (at most `largest`, in case rounding leaves the threshold above the last entry)."""
    below = tf.reduce_sum(tf.cast(cdf <= threshold[:, None], tf.int32), axis=-1)
    return tf.minimum(below, largest)


def mix_in_predictions(
    outputs, target_in, target_lengths, project, probability, seed, rows: Rows, static_shapes
):
    """The second pass's inputs: `target_in` [B, T] with positions replaced by predictions.

    Position t (1 <= t < length) is replaced, with `probability`, by a draw from
    `project(outputs[:, t - 1])`: the prediction of the token at t. BOS and padding stay.

    Args:
      outputs: [B, T, units] first-pass decoder outputs.
      target_in, target_lengths: the reference inputs (BOS first) and their lengths.
      project: decoder outputs -> logits (the model's output projection).
      probability: float32 scalar, the schedule's value at this step.
      seed: int32 [2], this step's seed for scheduled sampling.
      rows: this replica's rows of the global batch (`replica_rows`).
      static_shapes: project every position and select with a dense mask (XLA, TPU); else
        project only the replaced positions (on CPU this is the cheaper way: at p = 0.25 a
        quarter of the projection). Both give the same ids for the same logits.
    """
    batch, steps = tf.shape(target_in)[0], tf.shape(target_in)[1]
    coin, draw = _uniforms(seed, rows, batch, steps)
    positions = tf.range(steps)[None, :]
    replace = (coin < probability) & (positions >= 1) & (positions < target_lengths[:, None])
    if static_shapes:
        logits = project(outputs[:, :-1])  # [B, T - 1, V]: predictions of positions 1..T-1
        flat = tf.reshape(logits, [-1, tf.shape(logits)[-1]])
        drawn = draw_from_logits(flat, tf.reshape(draw[:, 1:], [-1]))
        predicted = tf.concat([target_in[:, :1], tf.reshape(drawn, [batch, steps - 1])], 1)
        return tf.where(replace, predicted, target_in)
    where = tf.where(replace)  # [N, 2] (row, position)
    logits = project(tf.gather_nd(outputs, where - [0, 1]))
    drawn = draw_from_logits(logits, tf.gather_nd(draw, where))
    return tf.tensor_scatter_nd_update(target_in, where, tf.cast(drawn, target_in.dtype))


def parallel_sampling_outputs(seq2seq, inputs, probability, rows: Rows, static_shapes: bool):
    """Decoder outputs [B, T, units] of parallel scheduled sampling's trained pass.

    One encoder run serves both passes. The first pass runs with the same dropout masks as the
    second, so its predictions are those of the model being trained.

    Args:
      seq2seq: the `model.Seq2Seq`.
      inputs: the model's inputs (see `Seq2Seq.call`), with the step's seed.
      probability, rows, static_shapes: see `mix_in_predictions`.
    """
    start = seq2seq.encode(inputs, training=True)
    target_in, lengths = inputs["target_in"], inputs["target_lengths"]
    first = seq2seq.decode(start, target_in, lengths, training=True, trainable=False)
    fed = mix_in_predictions(
        first,
        target_in,
        lengths,
        seq2seq.projection,
        probability,
        layers.fold_seed(start.seed, 104),
        rows,
        static_shapes,
    )
    return seq2seq.decode(start, fed, lengths, training=True)


class DenseScheduledSampler(tfa_lib.TrainingSampler):
    """Feeds the ground truth, or with probability p an id drawn from the model's own output.

    Like TFA's reference sampler, the fed id is drawn from the softmax of the logits; unlike it,
    the choice is a dense `tf.where` over the whole batch at every step.
    """

    def __init__(self, embedding_fn, probability, seed):
        """Args: embedding_fn maps ids to inputs; probability a float scalar; seed int32 [2]."""
        super().__init__()
        self._embedding_fn = embedding_fn
        self._probability = tf.cast(probability, tf.float32)  # Keras may autocast it.
        self._seed = tf.convert_to_tensor(seed, tf.int32)

    def next_inputs(self, time, outputs, state, sample_ids):
        finished, truth, state = super().next_inputs(time, outputs, state, sample_ids)
        seed = tf.random.experimental.stateless_fold_in(self._seed, tf.cast(time, tf.int32))
        coin_seed, draw_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        use_sample = tf.random.stateless_uniform([self.batch_size], coin_seed) < self._probability
        drawn = tf.random.stateless_categorical(
            tf.cast(outputs, tf.float32), 1, draw_seed, dtype=tf.int32
        )[:, 0]
        sampled = tf.cast(self._embedding_fn(drawn), truth.dtype)
        next_inputs = tf.where(use_sample[:, None], sampled, truth)
        return finished, next_inputs, state
