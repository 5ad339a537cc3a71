"""Range reading: any cut of a file gives back every line once, with its number."""

import gzip

import apache_beam as beam
import pytest
from apache_beam.io import filesystem
from apache_beam.testing import test_pipeline, util

from preprocessing import ranges

_CONTENT = b"first\tline\r\n\nthird is a much longer line than the others\nx\n\n\nlast, no newline"


def _whole(path):
    with open(path, "rb") as f:
        return list(enumerate(f, start=1))


def _metadata(path):
    return filesystem.FileMetadata(str(path), path.stat().st_size)


@pytest.mark.parametrize("range_bytes", [1, 2, 3, 7, 12, 40, 1000])
def test_every_cut_reads_every_line_once_with_its_number(tmp_path, range_bytes):
    path = tmp_path / "in.tsv"
    path.write_bytes(_CONTENT)
    pieces = ranges.plan(_metadata(path), range_bytes)
    assert len(pieces) == -(-len(_CONTENT) // range_bytes)
    counts = {piece.index: ranges.count_line_starts(piece) for piece in pieces}
    lines = []
    for piece in pieces:
        before = sum(counts[index] for index in range(piece.index))
        lines += list(ranges.read_lines(piece, before + 1))
    assert lines == _whole(path)


def test_compressed_and_small_files_are_read_whole(tmp_path):
    lines = [b"line %d\n" % i for i in range(1000)]
    compressed, small = tmp_path / "in.tsv.gz", tmp_path / "small.tsv"
    with gzip.open(compressed, "wb") as f:
        f.write(b"".join(lines))
    small.write_bytes(_CONTENT)
    (piece,) = ranges.plan(_metadata(compressed), 10)
    assert piece.whole_file
    assert list(ranges.read_lines(piece, 1)) == list(enumerate(lines, start=1))
    (piece,) = ranges.plan(_metadata(small), len(_CONTENT))
    assert piece.whole_file


def test_read_lines_transform_reads_several_files_in_ranges(tmp_path):
    paths = [tmp_path / "a.tsv", tmp_path / "b.tsv", tmp_path / "empty.tsv"]
    paths[0].write_bytes(_CONTENT)
    paths[1].write_bytes(b"".join(b"line %d\n" % i for i in range(200)))
    paths[2].write_bytes(b"")
    expected = [(str(p), n, line) for p in paths for n, line in _whole(p)]
    with test_pipeline.TestPipeline() as p:
        lines, counts = (
            p | beam.Create([_metadata(path) for path in paths]) | ranges.ReadLines(range_bytes=9)
        )
        util.assert_that(lines, util.equal_to(expected))
        totals = counts | beam.CombinePerKey(sum)
        util.assert_that(
            totals,
            util.equal_to([(str(paths[0]), 7), (str(paths[1]), 200), (str(paths[2]), 0)]),
            label="CheckCounts",
        )
