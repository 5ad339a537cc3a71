"""Dev loss, perplexity and BLEU/chrF (sacrebleu) on beam-search output, in bounded time.

Both halves are bounded: the loss is taken on the first `train.eval_loss_sentences` pairs of a
split and decoding on the first `limit` sentences. Decoding is also spread over the replicas (the
devices of one process and the workers of a cluster): replica r decodes batches r, r + R, ...
of exactly the batches one process would decode, and the best hypotheses are gathered on every
worker, so the translations and scores equal a one-process run's while each replica decodes
1/R of them. Scores are on detokenized text, comparable with any system scored by sacrebleu.
"""

import math
import time

import numpy as np
import sacrebleu
import tensorflow as tf

from pipeline import features
from pipeline import vocab as vocab_lib
from trainer import data


def strip_after_eos(ids: np.ndarray) -> list[int]:
    """Ids up to (not including) the first EOS, without padding."""
    out = []
    for token in ids.tolist():
        if token == vocab_lib.EOS_ID:
            break
        if token != vocab_lib.PAD_ID:
            out.append(token)
    return out


def corpus_scores(hypotheses: list[str], references: list[str]) -> dict:
    """BLEU and chrF with their sacrebleu signatures."""
    bleu = sacrebleu.metrics.BLEU()
    chrf = sacrebleu.metrics.CHRF()
    bleu_score = bleu.corpus_score(hypotheses, [references])
    chrf_score = chrf.corpus_score(hypotheses, [references])
    return {
        "bleu": round(bleu_score.score, 2),
        "chrf": round(chrf_score.score, 2),
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
        "sentences": len(hypotheses),
    }


def decode_replicas(strategy: tf.distribute.Strategy) -> int:
    """Replicas that decode in parallel: all of them, except under a TPU, where beam search
    (dynamic shapes) runs on the host instead."""
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return 1
    return strategy.num_replicas_in_sync


class Evaluator:
    """Computes dev loss with the training model and translation quality with `decoding_model`.

    The two differ under mixed precision (`TrainState.decoding_model` is a float32 twin whose
    weights are refreshed before each evaluation).
    """

    def __init__(self, task, decoding_model, target_tokenizer, data_cfg, strategy=None):
        self.task = task
        self.model = decoding_model
        self.target_tokenizer = target_tokenizer
        self.data_cfg = data_cfg
        self.strategy = strategy or tf.distribute.get_strategy()
        self.replicas = decode_replicas(self.strategy)
        # Hypotheses are gathered across replicas at one width: decoding never runs longer.
        self._width = task.cfg.model.max_decode_length
        # One trace for every batch shape: eval batches are padded to their longest pair.
        self._loss_fn = tf.function(self._batch_loss, reduce_retracing=True)
        ids = tf.TensorSpec([None, None], tf.int32)
        self._beam_fn = tf.function(
            self._beam, input_signature=[ids, tf.TensorSpec([None], tf.int32)]
        )
        self._round_fn = tf.function(
            self._decode_round,
            input_signature=[
                tf.TensorSpec([None, None, None], tf.int32),
                tf.TensorSpec([None, None], tf.int32),
                tf.TensorSpec([None], tf.int32),
            ],
        )

    def _batch_loss(self, batch):
        _, tokens, nll = self.task.loss(batch, tf.constant(0, tf.int64), training=False)
        return nll, tokens

    def _beam(self, source_ids, source_lengths):
        """The one call into the model's decoder: the best hypothesis' ids [B, T] per source."""
        ids, _, _ = self.model.beam_search(source_ids, source_lengths)
        return ids[:, 0, :]

    def loss(self, split: str = "dev", limit: int = -1) -> dict:
        """Mean token NLL and perplexity over the first `limit` pairs of `split` (-1: all)."""
        started = time.time()
        total, tokens, pairs = 0.0, 0.0, 0
        for batch in data.make_eval_dataset(self.data_cfg, split, limit):
            nll, count = self._loss_fn(batch)
            total += float(nll)
            tokens += float(count)
            pairs += int(batch[data.SOURCE_LENGTHS].shape[0])
        mean = total / max(tokens, 1.0)
        return {
            "loss": mean,
            "perplexity": math.exp(min(mean, 50.0)),
            "loss_pairs": pairs,
            "loss_seconds": round(time.time() - started, 2),
        }

    def translate_split(
        self, split: str, limit: int = -1
    ) -> tuple[list[str], list[str], list[str]]:
        """(sources, hypotheses, references) for the first `limit` pairs of `split`."""
        sources, references, batches = [], [], []
        for batch in data.make_eval_dataset(self.data_cfg, split, limit, with_text=True):
            batches.append((batch[data.SOURCE_IDS].numpy(), batch[data.SOURCE_LENGTHS].numpy()))
            sources += [t.decode("utf-8") for t in batch[features.SOURCE_TEXT].numpy()]
            references += [t.decode("utf-8") for t in batch[features.TARGET_TEXT].numpy()]
        hypotheses = []
        for ids in self._decode(batches):
            pieces = tf.ragged.constant([strip_after_eos(row) for row in ids], dtype=tf.int32)
            texts = self.target_tokenizer.detokenize(pieces).numpy()
            hypotheses += [t.decode("utf-8") for t in texts]
        return sources, hypotheses, references

    def quality(self, split: str = "dev", limit: int = -1) -> dict:
        """BLEU/chrF of the first `limit` sentences of `split`: scores, three samples, every
        hypothesis (`hypotheses`, in split order) and the decoding time."""
        started = time.time()
        sources, hypotheses, references = self.translate_split(split, limit)
        result = corpus_scores(hypotheses, references)
        result["samples"] = [
            {"source": s, "hypothesis": h, "reference": r}
            for s, h, r in list(zip(sources, hypotheses, references, strict=True))[:3]
        ]
        result["decode_seconds"] = round(time.time() - started, 2)
        one_batch = len(sources) <= self.data_cfg.eval_batch_size
        result["decode_replicas"] = 1 if one_batch else self.replicas
        result["hypotheses"] = hypotheses
        return result

    def _decode(self, batches: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """Best-hypothesis ids per batch, decoded `self.replicas` batches at a time.

        A single batch is decoded where it is (on every worker alike): spreading it would only
        trace the decoder once per replica.
        """
        if self.replicas == 1 or len(batches) == 1:
            return [self._beam_fn(ids, lengths).numpy() for ids, lengths in batches]
        decoded = []
        for first in range(0, len(batches), self.replicas):
            group = batches[first : first + self.replicas]
            gathered = self._round_fn(*_stack_round(group, self.replicas)).numpy()
            blocks = gathered.reshape(self.replicas, -1, self._width)
            decoded += [
                block[: len(ids)]
                for block, (ids, _) in zip(blocks[: len(group)], group, strict=True)
            ]
        return decoded

    def _decode_round(self, ids, lengths, rows):
        """Replica r decodes batch r of a stacked round; all hypotheses gathered everywhere.

        Args:
          ids: [replicas, rows, width] the round's batches, zero-padded to common sizes.
          lengths: [replicas, rows] their source lengths.
          rows: [replicas] each batch's real row count.

        Returns:
          [replicas * rows, self._width] best-hypothesis ids, PAD after each hypothesis.
        """
        max_rows = tf.shape(ids)[1]

        def replica_decode():
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            count = rows[replica]
            batch_lengths = lengths[replica, :count]
            # The batch exactly as one process decodes it: its own rows, padded to its longest.
            hypotheses = self._beam(
                ids[replica, :count, : tf.reduce_max(batch_lengths)], batch_lengths
            )[:, : self._width]
            padding = [[0, max_rows - count], [0, self._width - tf.shape(hypotheses)[1]]]
            return tf.pad(hypotheses, padding, constant_values=vocab_lib.PAD_ID)

        per_replica = self.strategy.run(replica_decode)
        return self.strategy.gather(per_replica, axis=0)


def _stack_round(group: list, replicas: int):
    """A round's batches as [replicas, rows, width] ids, [replicas, rows] lengths, [replicas] rows.

    A replica left without a batch in the last round decodes the first sentence again, and its
    output is dropped.
    """
    group = list(group) + [(group[0][0][:1], group[0][1][:1])] * (replicas - len(group))
    max_rows = max(len(ids) for ids, _ in group)
    width = max(ids.shape[1] for ids, _ in group)
    ids = np.full([replicas, max_rows, width], vocab_lib.PAD_ID, np.int32)
    lengths = np.zeros([replicas, max_rows], np.int32)
    for replica, (batch_ids, batch_lengths) in enumerate(group):
        ids[replica, : len(batch_ids), : batch_ids.shape[1]] = batch_ids
        lengths[replica, : len(batch_lengths)] = batch_lengths
    rows = np.array([len(batch_ids) for batch_ids, _ in group], np.int32)
    return ids, lengths, rows
