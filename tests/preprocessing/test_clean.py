"""Cleaning: one named reason per bad record, normalised text, duplicates dropped in order."""

import logging
import re

import apache_beam as beam
import pytest
from apache_beam.testing import test_pipeline, util

from preprocessing import clean, progress, records


def _line(raw: bytes, origin="f.tsv:1", error=""):
    return records.Line(origin, raw, tuple(raw.split(b"\t")), error)


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"no tab", records.WRONG_FIELD_COUNT),
        (b"a\tb\tc", records.WRONG_FIELD_COUNT),
        (b"\xff\xfe\tx", records.INVALID_UTF8),
        (b"12345\tx", records.TOO_MANY_CHARS),
        (b" \t x", records.EMPTY_SIDE),
        ("x\t\x00\x1b\u200b".encode(), records.EMPTY_SIDE),
    ],
)
def test_clean_line_names_the_reason(raw, reason):
    assert clean.clean_line(_line(raw), max_chars=4, reverse=False) == records.Reject(
        reason, "f.tsv:1", raw
    )


def test_clean_line_keeps_a_reader_error():
    line = _line(b"orphan", error=records.LINE_COUNT_MISMATCH)
    assert clean.clean_line(line, 0, False).reason == records.LINE_COUNT_MISMATCH


def test_clean_line_normalises_unicode_whitespace_and_controls():
    raw = "Cafe\u0301\u00a0au \x07lait\t\u00c4pfel\u200b  ".encode()
    pair = clean.clean_line(_line(raw), 0, False)
    assert pair == records.Pair("Caf\u00e9 au lait", "\u00c4pfel", "f.tsv:1", raw)


def test_clean_line_reverse_swaps_sides():
    pair = clean.clean_line(_line(b"Haus\thouse"), 0, reverse=True)
    assert (pair.source, pair.target) == ("house", "Haus")


def _counted(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == progress.__name__]


def test_clean_pairs_splits_pairs_from_rejects(caplog):
    lines = [_line(b"a\tb", "f:1"), _line(b"bad", "f:2"), _line(b"c\t ", "f:3")]
    caplog.set_level(logging.INFO)
    with test_pipeline.TestPipeline() as p:
        read_counts = p | "ReadCounts" >> beam.Create([("f", 2), ("f", 1)])
        pairs, rejects = p | beam.Create(lines) | clean.CleanPairs(100, False, read_counts, 0)
        util.assert_that(pairs, util.equal_to([records.Pair("a", "b", "f:1", b"a\tb")]))
        util.assert_that(
            rejects,
            util.equal_to(
                [
                    records.Reject(records.WRONG_FIELD_COUNT, "f:2", b"bad"),
                    records.Reject(records.EMPTY_SIDE, "f:3", b"c\t "),
                ]
            ),
            label="CheckRejects",
        )
    # Every line cleaned is counted against the lines the readers reported.
    assert re.fullmatch(
        r"Clean progress: worker \d+ has cleaned 3 of 3 lines of input lines in .*",
        _counted(caplog)[-1],
    )


def test_drop_duplicates_keeps_the_first_occurrence_by_line_number(caplog):
    pairs = [
        records.Pair("a", "b", "f:10", b"a\tb"),
        records.Pair("a", "b", "f:9", b"a \tb"),
        records.Pair("a", "c", "f:11", b"a\tc"),
        records.Pair("a", "b", "e:100", b"a\t b"),
    ]
    caplog.set_level(logging.INFO)
    with test_pipeline.TestPipeline() as p:
        unique, rejects = p | beam.Create(pairs) | clean.DropDuplicates(progress_seconds=0)
        util.assert_that(unique, util.equal_to([pairs[3], pairs[2]]))
        util.assert_that(
            rejects,
            util.equal_to(
                [
                    records.Reject(records.DUPLICATE, "f:9", b"a \tb"),
                    records.Reject(records.DUPLICATE, "f:10", b"a\tb"),
                ]
            ),
            label="CheckRejects",
        )
    # Every copy compared is counted against all pairs.
    assert re.fullmatch(
        r"Deduplicate progress: worker \d+ has deduplicated 4 of 4 pairs of sentence pairs in .*",
        _counted(caplog)[-1],
    )
