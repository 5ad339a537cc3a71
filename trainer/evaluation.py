"""Dev loss, perplexity and BLEU/chrF (sacrebleu) on beam-search output, in bounded time.

Both halves are bounded: the loss is taken on the first `train.eval_loss_sentences` pairs of a
split and decoding on the first `limit` sentences. Both are spread over the replicas (the devices
of one process and the workers of a cluster): replica r takes batches r, r + R, ... of exactly
the batches one process would, so the results equal a one-process run's while each replica does
1/R of the work. Scores are on detokenized text, comparable with any system scored by sacrebleu.

What keeps an evaluation cheap inside a training budget (each measured on the main job):
- Pairs are read once per split and kept (`Evaluator.pairs`): later evaluations read nothing,
  and building an input pipeline traces its functions every time.
- Both halves run on length-sorted batches: the loss in split order padded every batch of 64 to
  its longest pair (about 60 pieces for a mean of 15), which doubled the loss pass.
- Every `tf.function` here has a fixed signature with free batch and time dimensions, so each
  is traced once per process, and later evaluations (`train.eval_every`) trace nothing.
"""

import math
import time
from typing import NamedTuple

import numpy as np
import sacrebleu
import tensorflow as tf

from pipeline import console, features
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


class EvalPairs(NamedTuple):
    """The first pairs of a split, in split order, as unpadded id rows and raw text."""

    sources: list  # [S] source ids, EOS included
    targets_in: list  # [T] BOS + target ids (what the decoder reads)
    targets_out: list  # [T] target ids + EOS (what it predicts)
    source_texts: list
    target_texts: list

    def first(self, limit: int) -> "EvalPairs":
        """The first `limit` pairs (-1: all)."""
        return self if limit < 0 else EvalPairs(*(column[:limit] for column in self))


_LOSS_KEYS = (data.SOURCE_IDS, data.TARGET_IN, data.TARGET_OUT)
_LENGTH_KEYS = (data.SOURCE_LENGTHS, data.TARGET_LENGTHS)


def _loss_signature(leading: list) -> dict:
    """The loss batch spec with free batch and time dimensions, under `leading` extra axes."""
    spec = {key: tf.TensorSpec([*leading, None, None], tf.int32) for key in _LOSS_KEYS}
    spec.update({key: tf.TensorSpec([*leading, None], tf.int32) for key in _LENGTH_KEYS})
    return spec


class Evaluator:
    """Computes dev loss with the training model and translation quality with `decoding_model`.

    The two can differ under mixed precision (`TrainState.search_model`: the training model
    where the fused searches run bfloat16 products, else a float32 twin whose weights are
    refreshed before each evaluation).
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
        # Pairs read so far per split: (pairs, the limit they were read with).
        self._pairs: dict[str, tuple[EvalPairs, int]] = {}
        # One trace each per process: batch and time dimensions are free in every signature.
        self._loss_fn = tf.function(self._batch_loss, input_signature=[_loss_signature([])])
        self._loss_round_fn = tf.function(
            self._loss_round,
            input_signature=[_loss_signature([None]), tf.TensorSpec([], tf.int32)],
        )
        # Decoding is written with explicit loops and conditions (`tf.while_loop`, `tf.cond`),
        # so AutoGraph has nothing to convert; skipping it took about half of the decoder's
        # trace time (5.1 s -> 2.4 s on the reference model, two replicas).
        ids = tf.TensorSpec([None, None], tf.int32)
        self._beam_fn = tf.function(
            self._beam, input_signature=[ids, tf.TensorSpec([None], tf.int32)], autograph=False
        )
        self._round_fn = tf.function(
            self._decode_round,
            input_signature=[
                tf.TensorSpec([None, None, None], tf.int32),
                tf.TensorSpec([None, None], tf.int32),
                tf.TensorSpec([None], tf.int32),
            ],
            autograph=False,
        )

    def traced_functions(self) -> int:
        """How many concrete functions the evaluator has traced so far (a test and the
        benchmark check that later evaluations add none)."""
        functions = (self._loss_fn, self._loss_round_fn, self._beam_fn, self._round_fn)
        return sum(f.experimental_get_tracing_count() for f in functions)

    def pairs(self, split: str, limit: int = -1) -> EvalPairs:
        """The first `limit` pairs of `split` (-1: all), read on first use and kept.

        Kept per split, so the dev split is read once per run however often it is evaluated;
        a later request for more pairs than were read reads again. (Fewer pairs than the limit
        read means the split has no more.)
        """
        kept, kept_limit = self._pairs.get(split, (None, 0))
        covered = kept is not None and (
            kept_limit < 0 or len(kept.sources) < kept_limit or 0 <= limit <= kept_limit
        )
        if not covered:
            kept, kept_limit = _read_pairs(self.data_cfg, split, limit), limit
            self._pairs[split] = (kept, kept_limit)
        return kept.first(limit)

    def _batch_loss(self, batch):
        """(summed NLL, target tokens) of one batch, as a [2] tensor."""
        _, tokens, nll = self.task.loss(batch, tf.constant(0, tf.int64), training=False)
        return tf.stack([nll, tokens])

    def _loss_round(self, batches, count):
        """Replica r scores batch r of a stacked round; the sums are added over replicas.

        Args:
          batches: `_loss_signature([replicas])`: the round's batches, zero-padded to common
            sizes.
          count: how many of the batches are real; replicas past it score a filler and add 0.

        Returns:
          [2] (summed NLL, target tokens) of the round.
        """

        def replica_loss():
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            lengths = {key: batches[key][replica] for key in _LENGTH_KEYS}
            rows = tf.math.count_nonzero(lengths[data.SOURCE_LENGTHS], dtype=tf.int32)
            lengths = {key: value[:rows] for key, value in lengths.items()}
            # The batch exactly as one process scores it: its rows, padded to its longest.
            source_width = tf.reduce_max(lengths[data.SOURCE_LENGTHS])
            target_width = tf.reduce_max(lengths[data.TARGET_LENGTHS])
            batch = {
                data.SOURCE_IDS: batches[data.SOURCE_IDS][replica, :rows, :source_width],
                data.TARGET_IN: batches[data.TARGET_IN][replica, :rows, :target_width],
                data.TARGET_OUT: batches[data.TARGET_OUT][replica, :rows, :target_width],
                **lengths,
            }
            real = tf.cast(replica < count, tf.float32)
            return self._batch_loss(batch) * real

        per_replica = self.strategy.run(replica_loss)
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    def _beam(self, source_ids, source_lengths):
        """The one call into the model's decoder: the best hypothesis' ids [B, T] per source."""
        ids, _, _ = self.model.beam_search(source_ids, source_lengths)
        return ids[:, 0, :]

    def loss(self, split: str = "dev", limit: int = -1) -> dict:
        """Mean token NLL and perplexity over the first `limit` pairs of `split` (-1: all).

        The sums do not depend on how pairs are batched, so they are taken over length-sorted
        batches (`loss_batches`), `self.replicas` batches at a time.
        """
        started = time.time()
        pairs = self.pairs(split, limit)
        batches = loss_batches(pairs, self.data_cfg.eval_batch_size)
        totals = np.zeros(2, np.float64)
        if self.replicas == 1 or len(batches) == 1:
            for batch in batches:
                totals += self._loss_fn(batch).numpy()
        else:
            for first in range(0, len(batches), self.replicas):
                group = batches[first : first + self.replicas]
                stacked = _stack_loss_round(group, self.replicas)
                totals += self._loss_round_fn(stacked, np.int32(len(group))).numpy()
        mean = totals[0] / max(totals[1], 1.0)
        return {
            "loss": mean,
            "perplexity": math.exp(min(mean, 50.0)),
            "loss_pairs": len(pairs.sources),
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
        pairs = self.pairs(split, limit)
        rows, sources, references = pairs.sources, pairs.source_texts, pairs.target_texts
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
        progress = console.Progress(
            f"decoding {split}",
            sum(len(ids) for ids, _ in batches),
            seconds=_PROGRESS_SECONDS,
            final_line=False,  # the evaluation's results follow at once
        )
        if self.replicas == 1 or len(batches) == 1:
            for ids, lengths in batches:
                yield self._beam_fn(ids, lengths).numpy()
                progress.add(len(ids))
            return
        for first in range(0, len(batches), self.replicas):
            group = batches[first : first + self.replicas]
            gathered = self._round_fn(*_stack_round(group, self.replicas)).numpy()
            blocks = gathered.reshape(self.replicas, -1, self._width)
            for block, (ids, _) in zip(blocks[: len(group)], group, strict=True):
                yield block[: len(ids)]
            progress.add(sum(len(ids) for ids, _ in group))

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
        batches.append(_pad_rows([rows[i] for i in order[first : first + batch_size]]))
    return order, batches


def loss_batches(pairs: EvalPairs, batch_size: int) -> list[dict]:
    """Loss batches of `batch_size` pairs of similar target (then source) length, longest first.

    Each is a dict of the model's inputs, padded to its own longest pair: the recurrent layers
    run as long as that, so pairs in split order would make every short pair pay for the
    longest of its batch.
    """
    order = sorted(
        range(len(pairs.sources)),
        key=lambda i: (-len(pairs.targets_in[i]), -len(pairs.sources[i]), i),
    )
    batches = []
    for first in range(0, len(order), batch_size):
        chunk = order[first : first + batch_size]
        source_ids, source_lengths = _pad_rows([pairs.sources[i] for i in chunk])
        target_in, target_lengths = _pad_rows([pairs.targets_in[i] for i in chunk])
        target_out, _ = _pad_rows([pairs.targets_out[i] for i in chunk])
        batches.append(
            {
                data.SOURCE_IDS: source_ids,
                data.SOURCE_LENGTHS: source_lengths,
                data.TARGET_IN: target_in,
                data.TARGET_OUT: target_out,
                data.TARGET_LENGTHS: target_lengths,
            }
        )
    return batches


def _pad_rows(rows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Id rows -> (ids [rows, the longest], lengths [rows]), PAD-filled."""
    lengths = np.array([len(row) for row in rows], np.int32)
    ids = np.full([len(rows), max(lengths.max(), 1)], vocab_lib.PAD_ID, np.int32)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = row
    return ids, lengths


def _read_pairs(cfg, split: str, limit: int) -> EvalPairs:
    """The first `limit` pairs of `split` (-1: all) as an `EvalPairs`, in split order."""
    pairs = EvalPairs([], [], [], [], [])
    for batch in data.make_eval_dataset(cfg, split, limit, with_text=True):
        batch = {key: value.numpy() for key, value in batch.items()}
        for column, key, lengths in (
            (pairs.sources, data.SOURCE_IDS, data.SOURCE_LENGTHS),
            (pairs.targets_in, data.TARGET_IN, data.TARGET_LENGTHS),
            (pairs.targets_out, data.TARGET_OUT, data.TARGET_LENGTHS),
        ):
            column += [row[:n] for row, n in zip(batch[key], batch[lengths], strict=True)]
        pairs.source_texts.extend(t.decode("utf-8") for t in batch[features.SOURCE_TEXT])
        pairs.target_texts.extend(t.decode("utf-8") for t in batch[features.TARGET_TEXT])
    return pairs


def _stack_loss_round(group: list[dict], replicas: int) -> dict:
    """A round's loss batches stacked as `_loss_signature([replicas])`, zero-padded.

    A replica left without a batch in the last round gets a copy of the first one (its sums
    are then dropped): every replica must run the same collective.
    """
    group = list(group) + [group[0]] * (replicas - len(group))
    stacked = {}
    for key in group[0]:
        shape = np.max([batch[key].shape for batch in group], axis=0)
        values = np.zeros([replicas, *shape], np.int32)
        for replica, batch in enumerate(group):
            values[(replica, *(slice(0, n) for n in batch[key].shape))] = batch[key]
        stacked[key] = values
    return stacked


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
