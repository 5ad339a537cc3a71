"""The single-replica view of training: build the model, compute the loss, one train step.

Nothing here knows about checkpoints or the loop; `train_loop` runs `train_step` under
`strategy.run`. Losses are sums divided by the *global* batch, so replicas add up to the mean.
"""

import tensorflow as tf

from pipeline import config as config_lib
from trainer import data, model, sampling


def build_model(cfg: config_lib.ModelConfig, metadata: dict) -> model.Seq2Seq:
    vocab = metadata["vocab"]
    return model.Seq2Seq(cfg, vocab["source"]["size"], vocab["target"]["size"])


def sparse_softmax_nll(labels, logits):
    """-log softmax(logits)[label] per position: `sparse_softmax_cross_entropy_with_logits`.

    TF's fused CPU kernel took 28 ms for [640, 8k] logits on one thread, as long as the
    projection's matrix product; this takes 7 ms, gradient included. The forward pass is one
    softmax plus two row maxima: log-sum-exp = max(logits) - log(max(softmax)), and the
    largest probability is at least 1/V, so the log never underflows. The gradient is the saved
    softmax scaled by the incoming gradient, minus it at the labels.
    """
    depth = tf.shape(logits)[-1]
    flat_labels = tf.reshape(labels, [-1])
    rows = tf.range(tf.shape(flat_labels)[0])

    @tf.custom_gradient
    def nll(flat_logits):
        probs = tf.nn.softmax(flat_logits)
        log_sum_exp = tf.reduce_max(flat_logits, -1) - tf.math.log(tf.reduce_max(probs, -1))
        label_logits = tf.gather(flat_logits, flat_labels, batch_dims=1)

        def grad(d_nll):
            at_labels = tf.stack([rows, flat_labels], axis=1)
            return tf.tensor_scatter_nd_sub(probs * d_nll[:, None], at_labels, d_nll)

        return log_sum_exp - label_logits, grad

    return tf.reshape(nll(tf.reshape(logits, [-1, depth])), tf.shape(labels))


def cross_entropy(logits, labels, smoothing: float, label_and_mean_logits=None):
    """Per-position (label-smoothed loss, plain NLL), in float32.

    With smoothing s over V classes the loss is (1 - s) * nll - s * mean(log_probs), which
    equals nll + s * (logits[label] - mean(logits)). The NLL comes from `sparse_softmax_nll`;
    the two smoothing terms are taken from `label_and_mean_logits` when given (see
    `OutputProjection.label_and_mean_logits`), else read off the logits.
    """
    logits = tf.cast(logits, tf.float32)
    nll = sparse_softmax_nll(labels, logits)
    if smoothing <= 0.0:
        return nll, nll
    if label_and_mean_logits is None:
        label_logits = tf.gather(logits, labels, batch_dims=labels.shape.rank)
        label_and_mean_logits = label_logits, tf.reduce_mean(logits, axis=-1)
    label_logits, mean_logits = label_and_mean_logits
    return nll + smoothing * (label_logits - mean_logits), nll


class TranslationTask:
    """Loss and train step for one replica, built from the frozen config."""

    def __init__(self, cfg: config_lib.ExperimentConfig, seq2seq: model.Seq2Seq, optimizer):
        self.cfg = cfg
        self.model = seq2seq
        self.optimizer = optimizer

    def sampling_probability(self, step):
        train = self.cfg.train
        return sampling.sampling_probability(
            train.sampling_schedule, step, train.sampling_probability, train.sampling_k
        )

    def uses_sampling(self) -> bool:
        return self.cfg.train.sampling_probability > 0.0

    def loss(self, batch, step, training: bool):
        """Returns (sum of token losses, number of target tokens, sum of plain NLL).

        Scheduled sampling (`train.sampling_mode`) applies when training: 'parallel' changes
        the decoder's inputs (`sampling.parallel_sampling_outputs`) and keeps everything else
        of teacher forcing; 'sequential' runs TFA's loop, which returns logits.
        """
        inputs = {
            data.SOURCE_IDS: batch[data.SOURCE_IDS],
            data.SOURCE_LENGTHS: batch[data.SOURCE_LENGTHS],
            data.TARGET_IN: batch[data.TARGET_IN],
            data.TARGET_LENGTHS: batch[data.TARGET_LENGTHS],
            "seed": tf.stack([self.cfg.train.seed, tf.cast(step, tf.int32)]),
        }
        labels = batch[data.TARGET_OUT]
        mask = tf.sequence_mask(batch[data.TARGET_LENGTHS], tf.shape(labels)[1])
        static_shapes = self.cfg.train.jit_compile
        if not (training and self.uses_sampling()):
            outputs = self.model(inputs, training=training)
        elif self.cfg.train.sampling_mode == sampling.SEQUENTIAL:
            inputs["sampling_probability"] = self.sampling_probability(step)
            return self._logits_loss(self.model(inputs, training=True), labels, mask)
        else:
            outputs = sampling.parallel_sampling_outputs(
                self.model,
                inputs,
                self.sampling_probability(step),
                sampling.replica_rows(),
                static_shapes,
            )
        return self._outputs_loss(outputs, labels, mask, static_shapes)

    def _logits_loss(self, logits, labels, mask):
        """The loss sums of `loss` from logits [B, T, V]."""
        smoothed, nll = cross_entropy(logits, labels, self.cfg.model.label_smoothing)
        mask_f = tf.cast(mask, tf.float32)
        tokens = tf.reduce_sum(mask_f)
        return tf.reduce_sum(smoothed * mask_f), tokens, tf.reduce_sum(nll * mask_f)

    def _outputs_loss(self, outputs, labels, mask, static_shapes: bool):
        """The loss sums of `loss` from decoder outputs [B, T, units], projected here."""
        tokens = tf.reduce_sum(tf.cast(mask, tf.float32))
        if static_shapes:
            mask_f = tf.cast(mask, tf.float32)  # XLA: keep the padding, masked
        else:
            # Only real tokens reach the 8k-way projection: padding costs nothing.
            outputs, labels = tf.boolean_mask(outputs, mask), tf.boolean_mask(labels, mask)
            mask_f = 1.0
        projection = self.model.projection
        smoothing = self.cfg.model.label_smoothing
        smoothed, nll = cross_entropy(
            projection(outputs),
            labels,
            smoothing,
            projection.label_and_mean_logits(outputs, labels) if smoothing > 0 else None,
        )
        return tf.reduce_sum(smoothed * mask_f), tokens, tf.reduce_sum(nll * mask_f)

    def train_step(self, batch, step):
        """One replica's step; gradients are summed across replicas, then clipped, then applied.

        Returns per-replica metrics to be summed by the caller.
        """
        global_batch = tf.cast(self.cfg.data.batch_size, tf.float32)
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            loss_sum, tokens, nll_sum = self.loss(batch, step, training=True)
            loss = loss_sum / global_batch
            scaled = self.optimizer.get_scaled_loss(loss)
        grads = tape.gradient(scaled, variables)
        grads = [tf.convert_to_tensor(g) for g in grads]
        context = tf.distribute.get_replica_context()
        grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        grads = self.optimizer.get_unscaled_gradients(grads)
        clip = self.cfg.train.clip_norm
        norm = tf.linalg.global_norm(grads)
        if clip > 0:
            grads, _ = tf.clip_by_global_norm(grads, clip, use_norm=norm)
        # The optimizer is a LossScaleOptimizer: it skips the update (still counting the step)
        # when any gradient is NaN/Inf, which a NaN loss always produces.
        self.optimizer.apply_gradients(
            zip(grads, variables, strict=True), skip_gradients_aggregation=True
        )
        finite = tf.logical_and(tf.math.is_finite(norm), tf.math.is_finite(loss_sum))
        return {
            "loss_sum": loss_sum,
            "nll_sum": nll_sum,
            "tokens": tokens,
            "source_tokens": tf.cast(tf.reduce_sum(batch[data.SOURCE_LENGTHS]), tf.float32),
            "grad_norm": norm / tf.cast(context.num_replicas_in_sync, tf.float32),
            "nonfinite": 1.0 - tf.cast(finite, tf.float32),
        }
