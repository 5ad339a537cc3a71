"""Scheduled sampling (Bengio et al., 2015) that compiles under XLA.

TFA's `ScheduledEmbeddingTrainingSampler` gathers and scatters only the sampled positions, which
gives dynamic shapes that XLA cannot compile. This sampler draws for every position and selects
with a dense mask, so every tensor keeps a static shape. Randomness is stateless and keyed on
(seed, step, time): a resumed run draws exactly what the uninterrupted run would have drawn.
"""

import math

import tensorflow as tf

from trainer import tfa_lib


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
