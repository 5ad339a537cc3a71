"""Tokenization with the trainer's own tokenizer, the length filters, and record encoding.

Pairs are tokenized by `pipeline.text.SubwordTokenizer`, the module the trainer and the exported
model run in-graph, so training ids and serving ids cannot drift apart. Length limits apply to
pieces, the unit the model pays for.
"""

import apache_beam as beam
import tensorflow as tf

from pipeline import features, text
from pipeline import vocab as vocab_lib
from preprocessing import packed, progress, records, vocabulary

REJECTED = "rejected"
# Tokenizing a batch is one TF call; batches amortise its fixed cost (about 0.3 ms).
_MIN_BATCH, _MAX_BATCH = 64, 1024


def _pack(split, pair):
    return split, packed.pack_pair(pair)


class _TokenizeBatchFn(beam.DoFn):
    """Batches of (split, packed `Pair`) -> `TokenizedPair`s, vocabularies from a side input.

    Tokenizers are built once per worker and vocabulary (keyed by fingerprint), not per batch:
    building one parses the SentencePiece model into a TF resource. Each batch counts towards
    the job's progress line for tokenization (`progress.Meter`), against the number of pairs.
    """

    def __init__(self, progress_seconds: float):
        self._tokenizers = {}
        self._meter = progress.LazyMeter(
            "sentence pairs", progress_seconds, progress.PAIRS, progress.TOKENIZE
        )

    def _tokenizer(self, learned: vocabulary.Learned) -> text.SubwordTokenizer:
        key = vocab_lib.fingerprint(learned.vocabulary)
        if key not in self._tokenizers:
            self._tokenizers[key] = text.SubwordTokenizer(learned.vocabulary)
        return self._tokenizers[key]

    def process(self, packed_batch, vocabularies: dict[str, vocabulary.Learned], total: int):
        vocabulary.check_learned(vocabularies)
        batch = [(split, packed.unpack_pair(pair)) for split, pair in packed_batch]
        source_ids = self._tokenizer(vocabularies["source"]).tokenize(
            tf.constant([pair.source for _, pair in batch])
        )
        target_ids = self._tokenizer(vocabularies["target"]).tokenize(
            tf.constant([pair.target for _, pair in batch])
        )
        for (split, pair), source, target in zip(
            batch, source_ids.to_list(), target_ids.to_list(), strict=True
        ):
            yield records.TokenizedPair(split, source, target, pair)
        self._meter.add(len(batch), total)
        self._meter.flush()


class TokenizePairs(beam.PTransform):
    """(split, `Pair`) -> `TokenizedPair`, given the PCollection of (side, `vocabulary.Learned`).

    Workers log how many pairs they have tokenized, at most every `progress_seconds`.
    """

    def __init__(
        self, vocabularies: beam.PCollection, progress_seconds: float = progress.DEFAULT_SECONDS
    ):
        super().__init__()
        self._vocabularies = vocabularies
        self._progress_seconds = progress_seconds

    def expand(self, split_pairs):
        # Counted while the vocabularies are learned, which the tokenizer waits for anyway.
        total = split_pairs | "CountPairs" >> beam.combiners.Count.Globally()
        return (
            split_pairs
            # The whole corpus waits here for the vocabularies; packed, it takes half the memory.
            | "Pack" >> beam.MapTuple(_pack)
            | "Batch" >> beam.BatchElements(min_batch_size=_MIN_BATCH, max_batch_size=_MAX_BATCH)
            | "Tokenize"
            >> beam.ParDo(
                _TokenizeBatchFn(self._progress_seconds),
                beam.pvalue.AsDict(self._vocabularies),
                beam.pvalue.AsSingleton(total),
            )
        )


def length_problem(
    source_length: int, target_length: int, max_length: int, max_length_ratio: float
) -> str | None:
    """The reject reason for a pair of these lengths in pieces, or None to keep it.

    Args:
      source_length: Source pieces.
      target_length: Target pieces.
      max_length: Longest side allowed.
      max_length_ratio: Largest longer/shorter ratio allowed (0: no limit); far-apart lengths
        usually mean a misaligned or untranslated pair.
    """
    longer, shorter = max(source_length, target_length), min(source_length, target_length)
    if longer > max_length:
        return records.TOO_LONG
    if max_length_ratio and longer > max_length_ratio * shorter:
        return records.BAD_LENGTH_RATIO
    return None


def _filter(tokenized: records.TokenizedPair, max_length, max_length_ratio):
    problem = length_problem(
        len(tokenized.source_ids), len(tokenized.target_ids), max_length, max_length_ratio
    )
    if problem:
        pair = tokenized.pair
        yield beam.pvalue.TaggedOutput(REJECTED, records.Reject(problem, pair.origin, pair.raw))
    else:
        yield tokenized


class FilterLengths(beam.PTransform):
    """`TokenizedPair`s -> (kept `TokenizedPair`s, `Reject`s too long or of a bad ratio)."""

    def __init__(self, max_length: int, max_length_ratio: float):
        super().__init__()
        self._max_length = max_length
        self._max_length_ratio = max_length_ratio

    def expand(self, tokenized):
        outputs = tokenized | "Filter" >> beam.FlatMap(
            _filter, self._max_length, self._max_length_ratio
        ).with_outputs(REJECTED, main="kept")
        return outputs.kept, outputs[REJECTED]


def encode(tokenized: records.TokenizedPair) -> tuple[str, bytes]:
    """(split, serialised `tf.train.Example`) in the one feature spec."""
    pair = tokenized.pair
    return tokenized.split, features.encode_example(
        tokenized.source_ids, tokenized.target_ids, pair.source, pair.target
    )


class EncodeExamples(beam.PTransform):
    """`TokenizedPair`s -> (split, serialised example)."""

    def expand(self, tokenized):
        return tokenized | "Encode" >> beam.Map(encode)
