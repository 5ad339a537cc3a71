"""Cleaning: decode and normalise each record, reject malformed ones, drop duplicate pairs.

Text is normalised by `pipeline.text.normalize` (NFC, no control characters, single spaces), the
same function the trainer's in-graph twin mirrors, so what the model sees at serving time matches
what it was trained on.
"""

import hashlib

import apache_beam as beam

from pipeline import text
from preprocessing import packed, records

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


def _clean(line, max_chars, reverse):
    result = clean_line(line, max_chars, reverse)
    if isinstance(result, records.Reject):
        yield beam.pvalue.TaggedOutput(REJECTED, result)
    else:
        yield result


class CleanPairs(beam.PTransform):
    """`Line`s -> (`Pair`s, `Reject`s)."""

    def __init__(self, max_chars: int, reverse: bool = False):
        super().__init__()
        self._max_chars = max_chars
        self._reverse = reverse

    def expand(self, lines):
        outputs = lines | "Clean" >> beam.FlatMap(
            _clean, self._max_chars, self._reverse
        ).with_outputs(REJECTED, main="pairs")
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


def _keep_first(key_and_packed_pairs):
    _, packed_pairs = key_and_packed_pairs
    first, *others = sorted(map(packed.unpack_pair, packed_pairs), key=_keep_order)
    yield first
    for pair in others:
        yield beam.pvalue.TaggedOutput(
            REJECTED, records.Reject(records.DUPLICATE, pair.origin, pair.raw)
        )


class DropDuplicates(beam.PTransform):
    """`Pair`s -> (unique `Pair`s, `Reject`s of the repeats).

    The occurrence kept is one in a test, then dev split an input assigned, else the first by
    origin, so the result does not depend on the runner's ordering; the others go to the
    rejects file pointing at their own lines.
    """

    def expand(self, pairs):
        outputs = (
            pairs
            # Every pair waits in this shuffle at once; packed, it is one small value each.
            | "KeyByPair" >> beam.Map(_keyed_by_pair)
            | "Group" >> beam.GroupByKey()
            | "KeepFirst" >> beam.FlatMap(_keep_first).with_outputs(REJECTED, main="unique")
        )
        return outputs.unique, outputs[REJECTED]
