"""Cleaning: decode and normalise each record, reject malformed ones, drop duplicate pairs.

Text is normalised by `pipeline.text.normalize` (NFC, no control characters, single spaces), the
same function the trainer's in-graph twin mirrors, so what the model sees at serving time matches
what it was trained on.
"""

import hashlib

import apache_beam as beam

from pipeline import text
from preprocessing import packed, progress, records

REJECTED = "rejected"


def clean_line(line: records.Line, max_chars: int, reverse: bool) -> records.Pair | records.Reject:
    """Decodes and normalises one record, or says why it cannot be used.

    Args:
      line: The record as read.
      max_chars: Longest side allowed, in characters before normalisation (0: no limit). Checked
        before normalising so a pathological line costs nothing downstream.
      reverse: Swap the two sides (translate the second column into the first).

    Returns:
      The cleaned pair, or a reject with the first reason that applies.
    """

    def reject(reason):
        return records.Reject(reason, line.origin, line.raw)

    if line.error:
        return reject(line.error)
    if len(line.fields) != 2:
        return reject(records.WRONG_FIELD_COUNT)
    try:
        sides = [field.decode("utf-8") for field in line.fields]
    except UnicodeDecodeError:
        return reject(records.INVALID_UTF8)
    if max_chars and max(len(side) for side in sides) > max_chars:
        return reject(records.TOO_MANY_CHARS)
    source, target = (text.normalize(side) for side in sides)
    if reverse:
        source, target = target, source
    if not source or not target:
        return reject(records.EMPTY_SIDE)
    return records.Pair(source, target, line.origin, line.raw, line.split)


class _CleanFn(beam.DoFn):
    """`Line` -> `Pair` or, tagged, `Reject`; counts lines against the lines read."""

    def __init__(self, max_chars: int, reverse: bool, progress_seconds: float):
        self._max_chars = max_chars
        self._reverse = reverse
        self._meter = progress.LazyMeter(
            "input lines", progress_seconds, progress.LINES, progress.CLEAN
        )

    def process(self, line, total: int | None = None):
        if total is not None:
            self._meter.add(1, total)
        result = clean_line(line, self._max_chars, self._reverse)
        if isinstance(result, records.Reject):
            yield beam.pvalue.TaggedOutput(REJECTED, result)
        else:
            yield result

    def finish_bundle(self):
        self._meter.flush()


class CleanPairs(beam.PTransform):
    """`Line`s -> (`Pair`s, `Reject`s).

    Workers log how many lines they have cleaned, at most every `progress_seconds`, against the
    lines read: the sum of `read_counts`, the readers' (input, count) reports.
    """

    def __init__(
        self,
        max_chars: int,
        reverse: bool = False,
        read_counts: beam.PCollection | None = None,
        progress_seconds: float = progress.DEFAULT_SECONDS,
    ):
        super().__init__()
        self._max_chars = max_chars
        self._reverse = reverse
        self._read_counts = read_counts
        self._progress_seconds = progress_seconds

    def expand(self, lines):
        clean = _CleanFn(self._max_chars, self._reverse, self._progress_seconds)
        side_inputs = []
        if self._read_counts is not None:  # else nothing to count against: no progress lines
            total = self._read_counts | "Total" >> beam.Values() | beam.CombineGlobally(sum)
            side_inputs.append(beam.pvalue.AsSingleton(total))
        outputs = lines | "Clean" >> beam.ParDo(clean, *side_inputs).with_outputs(
            REJECTED, main="pairs"
        )
        return outputs.pairs, outputs[REJECTED]


def dedup_key(pair: records.Pair) -> bytes:
    """A digest of both normalised sides (normalised text holds no tab, so the join is exact)."""
    return hashlib.blake2b(f"{pair.source}\t{pair.target}".encode(), digest_size=16).digest()


def origin_order(origin: str) -> tuple[str, int]:
    """Sorts origins by file, then numerically by line (`a:9` before `a:10`)."""
    where, _, number = origin.rpartition(":")
    return (where, int(number)) if number.isdigit() else (origin, 0)


# Of copies in different splits of an input that has its own splits, the held-out copy is kept:
# a published test or dev set stays whole, and none of its pairs stays in train.
_KEEP_FIRST = {"test": 0, "dev": 1}


def _keep_order(pair: records.Pair):
    return _KEEP_FIRST.get(pair.split, 2), origin_order(pair.origin)


def _keyed_by_pair(pair):
    return dedup_key(pair), packed.pack_pair(pair)


class _KeepFirstFn(beam.DoFn):
    """(key, packed copies) -> the copy kept, and the others tagged as `Reject`s; counts the
    copies against all pairs."""

    def __init__(self, progress_seconds: float):
        self._meter = progress.LazyMeter(
            "sentence pairs", progress_seconds, progress.PAIRS, progress.DEDUPLICATE
        )

    def process(self, key_and_packed_pairs, total: int):
        _, packed_pairs = key_and_packed_pairs
        first, *others = sorted(map(packed.unpack_pair, packed_pairs), key=_keep_order)
        self._meter.add(1 + len(others), total)
        yield first
        for pair in others:
            yield beam.pvalue.TaggedOutput(
                REJECTED, records.Reject(records.DUPLICATE, pair.origin, pair.raw)
            )

    def finish_bundle(self):
        self._meter.flush()


class DropDuplicates(beam.PTransform):
    """`Pair`s -> (unique `Pair`s, `Reject`s of the repeats).

    The occurrence kept is one in a test, then dev split an input assigned, else the first by
    origin, so the result does not depend on the runner's ordering; the others go to the
    rejects file pointing at their own lines. Workers log how many pairs they have compared,
    at most every `progress_seconds`, against all pairs (counted while they are grouped).
    """

    def __init__(self, progress_seconds: float = progress.DEFAULT_SECONDS):
        super().__init__()
        self._progress_seconds = progress_seconds

    def expand(self, pairs):
        total = pairs | "CountPairs" >> beam.combiners.Count.Globally()
        outputs = (
            pairs
            # Every pair waits in this shuffle at once; packed, it is one small value each.
            | "KeyByPair" >> beam.Map(_keyed_by_pair)
            | "Group" >> beam.GroupByKey()
            | "KeepFirst"
            >> beam.ParDo(
                _KeepFirstFn(self._progress_seconds), beam.pvalue.AsSingleton(total)
            ).with_outputs(REJECTED, main="unique")
        )
        return outputs.unique, outputs[REJECTED]
