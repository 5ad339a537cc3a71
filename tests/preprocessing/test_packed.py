"""Packing: lines and pairs come back exactly, and packing drops only text it can rebuild."""

import pytest

from preprocessing import clean, packed, records

_RAW = "Grüße aus Köln\tGreetings from Cologne".encode()


@pytest.mark.parametrize(
    "line",
    [
        records.Line("corpus.tsv:7", _RAW, tuple(_RAW.split(b"\t"))),
        records.Line("a.tsv:1", b"one\ttwo\tthree", (b"one", b"two", b"three")),
        records.Line("a.tsv:2", b"\xff\xfe\tx", (b"\xff\xfe", b"x")),
        records.Line("a.tsv:3", b"", (b"",)),
        # Aligned files: a side holding a tab is one field, not the raw line split at tabs.
        records.Line("src.txt:3", b"a\tb\tc", (b"a\tb", b"c")),
        records.Line("src.txt:9", b"orphan", (b"orphan",), records.LINE_COUNT_MISMATCH),
        records.Line("tfds:wmt:test[0]:4", _RAW, tuple(_RAW.split(b"\t")), "", "test"),
    ],
)
def test_line_round_trip(line):
    restored = packed.unpack_line(packed.pack_line(line))
    assert restored == line
    assert type(restored.fields) is tuple


def _pair(raw: bytes, reverse=False, split=""):
    line = records.Line("corpus.tsv:3", raw, tuple(raw.split(b"\t")), "", split)
    return clean.clean_line(line, 0, reverse)


@pytest.mark.parametrize(
    "pair",
    [
        _pair(_RAW),
        _pair(_RAW, reverse=True),
        _pair(_RAW, split="dev"),
        # Cleaning changed the text, so the raw line is kept as read.
        _pair("Cafe\u0301  au lait\t\u00c4pfel\u200b".encode()),
    ],
)
def test_pair_round_trip(pair):
    assert packed.unpack_pair(packed.pack_pair(pair)) == pair


def test_a_clean_pair_packs_without_a_second_copy_of_its_text():
    pair = _pair(_RAW)
    changed = pair._replace(raw=pair.raw + b" ")
    # The raw line that equals the cleaned sides is rebuilt, not stored.
    assert len(packed.pack_pair(changed)) - len(packed.pack_pair(pair)) >= len(_RAW)
