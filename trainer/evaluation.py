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
from absl import logging

from pipeline import features
from pipeline import vocab as vocab_lib
from trainer import data

# How often a long decode reports its progress.
_PROGRESS_SECONDS = 30.0


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
        """(sources, hypotheses, references) for the first `limit` pairs of `split`, in order.

        Sentences are decoded in batches of similar source length (`length_sorted_batches`):
        a beam search runs as long as the longest source of its batch allows, so mixed batches
        would make every short sentence pay for the longest. Hypotheses come back in split order.
        """
        sources, references, rows = [], [], []
        for batch in data.make_eval_dataset(self.data_cfg, split, limit, with_text=True):
            ids, lengths = batch[data.SOURCE_IDS].numpy(), batch[data.SOURCE_LENGTHS].numpy()
            rows += [row[:length] for row, length in zip(ids, lengths, strict=True)]
            sources += [t.decode("utf-8") for t in batch[features.SOURCE_TEXT].numpy()]
            references += [t.decode("utf-8") for t in batch[features.TARGET_TEXT].numpy()]
        order, batches = length_sorted_batches(rows, self.data_cfg.eval_batch_size)
        hypotheses = [""] * len(rows)
        decoded = (row for ids in self._decode(batches, split) for row in ids)
        sorted_ids = [strip_after_eos(row) for row in decoded]
        if sorted_ids:
            pieces = tf.ragged.constant(sorted_ids, dtype=tf.int32)
            texts = self.target_tokenizer.detokenize(pieces).numpy()
            for index, text in zip(order, texts, strict=True):
                hypotheses[index] = text.decode("utf-8")
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

    def _decode(self, batches: list[tuple[np.ndarray, np.ndarray]], split: str):
        """Yields the best-hypothesis ids of each batch, decoding `self.replicas` at a time.

        A single batch is decoded where it is (on every worker alike): spreading it would only
        trace the decoder once per replica. Long decodes log their progress and an estimate of
        the time left.
        """
        progress = _Progress(split, sum(len(ids) for ids, _ in batches))
        if self.replicas == 1 or len(batches) == 1:
            for ids, lengths in batches:
                yield self._beam_fn(ids, lengths).numpy()
                progress.done(len(ids))
            return
        for first in range(0, len(batches), self.replicas):
            group = batches[first : first + self.replicas]
            gathered = self._round_fn(*_stack_round(group, self.replicas)).numpy()
            blocks = gathered.reshape(self.replicas, -1, self._width)
            for block, (ids, _) in zip(blocks[: len(group)], group, strict=True):
                yield block[: len(ids)]
            progress.done(sum(len(ids) for ids, _ in group))

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


def length_sorted_batches(rows: list[np.ndarray], batch_size: int):
    """Source id rows -> (order, batches): batches of `batch_size` rows of similar length.

    `order[i]` is the split index of the i-th row across the batches, so outputs can be put
    back in split order. Each batch is (ids [rows, its longest], lengths [rows]), PAD-filled.
    Longest first, so the slowest batches (and any memory limit) show at the start.
    """
    order = sorted(range(len(rows)), key=lambda i: (-len(rows[i]), i))
    batches = []
    for first in range(0, len(order), batch_size):
        chunk = [rows[i] for i in order[first : first + batch_size]]
        lengths = np.array([len(row) for row in chunk], np.int32)
        ids = np.full([len(chunk), max(lengths.max(), 1)], vocab_lib.PAD_ID, np.int32)
        for r, row in enumerate(chunk):
            ids[r, : len(row)] = row
        batches.append((ids, lengths))
    return order, batches


class _Progress:
    """Logs a long decode's progress about every `_PROGRESS_SECONDS`, with the time left."""

    def __init__(self, split: str, total: int):
        self.split, self.total, self.count = split, total, 0
        self.started = self.last = time.time()

    def done(self, sentences: int):
        self.count += sentences
        now = time.time()
        if now - self.last < _PROGRESS_SECONDS or self.count >= self.total:
            return
        self.last = now
        rate = self.count / (now - self.started)
        logging.info(
            "decoding %s: %d/%d sentences (%.0f%%), %.1f/s, about %.0f s left",
            self.split,
            self.count,
            self.total,
            100.0 * self.count / self.total,
            rate,
            (self.total - self.count) / rate,
        )


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
