"""Readers: every input record becomes one Line with its origin, whatever the input kind."""

import gzip

import apache_beam as beam
import pytest
from apache_beam.testing import test_pipeline, util

from preprocessing import io, records
from tests.preprocessing import conftest


def test_parse_inputs_accepts_repeats_commas_pairs_and_tfds():
    specs = io.parse_inputs(
        ["a.tsv,b/*.tsv.gz", "tfds:wmt14_translate/de-en"], ["x.en"], ["x.de"], "/data"
    )
    assert specs == [
        io.TsvInput("a.tsv"),
        io.TsvInput("b/*.tsv.gz"),
        io.TfdsInput("wmt14_translate/de-en", "/data"),
        io.AlignedFilesInput("x.en", "x.de"),
    ]


def test_parse_inputs_refuses_unpaired_files_and_no_input():
    with pytest.raises(ValueError, match="--source_input has 2 file"):
        io.parse_inputs(None, ["a.en,b.en"], ["a.de"])
    with pytest.raises(ValueError, match="No input"):
        io.parse_inputs(None)


def test_missing_local_input_fails_before_the_job(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        io.check_local_inputs([io.TsvInput(str(tmp_path / "nothing-here*.tsv"))])
    io.check_local_inputs([io.TsvInput("gs://bucket/not-checked-from-here.tsv")])


def test_read_tsv_numbers_lines_and_keeps_raw_bytes(tmp_path):
    path = tmp_path / "in.tsv.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"a\tb\r\nbad \xff\tx\nno tab\n\tlast")
    with test_pipeline.TestPipeline() as p:
        lines, counts = p | io.ReadTsv(str(tmp_path / "*.tsv.gz"))
        util.assert_that(counts, util.equal_to([(str(path), 4)]), label="CheckCounts")
        util.assert_that(
            lines,
            util.equal_to(
                [
                    records.Line(f"{path}:1", b"a\tb", (b"a", b"b")),
                    records.Line(f"{path}:2", b"bad \xff\tx", (b"bad \xff", b"x")),
                    records.Line(f"{path}:3", b"no tab", (b"no tab",)),
                    records.Line(f"{path}:4", b"\tlast", (b"", b"last")),
                ]
            ),
        )


def test_read_aligned_files_marks_every_unpaired_line(tmp_path):
    source, target = tmp_path / "s.txt", tmp_path / "t.txt"
    source.write_bytes(b"one\ntwo\n")
    target.write_bytes(b"eins\nzwei\ndrei\nvier\n")
    spec = io.AlignedFilesInput(str(source), str(target))
    mismatch = records.LINE_COUNT_MISMATCH
    with test_pipeline.TestPipeline() as p:
        lines, counts = p | io.ReadAlignedFiles(spec)
        util.assert_that(
            counts, util.equal_to([(str(source), 2), (str(target), 2)]), label="CheckCounts"
        )
        util.assert_that(
            lines,
            util.equal_to(
                [
                    records.Line(f"{source}:1", b"one\teins", (b"one", b"eins")),
                    records.Line(f"{source}:2", b"two\tzwei", (b"two", b"zwei")),
                    records.Line(f"{target}:3", b"drei", (b"drei",), mismatch),
                    records.Line(f"{target}:4", b"vier", (b"vier",), mismatch),
                ]
            ),
        )


def test_read_tfds_reads_every_split_of_a_real_prepared_set(tfds_data_dir):
    spec = io.TfdsInput(conftest.TFDS_NAME, tfds_data_dir)
    expected = {f"{s}\t{t}".encode() for s, t in conftest.clean_pairs(40)}
    with test_pipeline.TestPipeline() as p:
        lines, counts = p | io.ReadInputs([spec])
        util.assert_that(
            counts,
            util.equal_to(
                [(f"tfds:{conftest.TFDS_NAME}:train[0shard]", 30)]
                + [(f"tfds:{conftest.TFDS_NAME}:validation[0shard]", 10)]
            ),
            label="CheckCounts",
        )
        util.assert_that(lines | beam.Map(lambda line: line.raw), util.equal_to(expected))
        util.assert_that(
            lines | "Origins" >> beam.Map(lambda line: line.origin.rsplit(":", 1)[0]),
            util.equal_to(
                [f"tfds:{conftest.TFDS_NAME}:train[0shard]"] * 30
                + [f"tfds:{conftest.TFDS_NAME}:validation[0shard]"] * 10
            ),
            label="CheckOrigins",
        )


def test_read_tfds_refuses_a_set_that_is_not_prepared(tmp_path):
    with pytest.raises(ValueError, match="no prepared examples"), test_pipeline.TestPipeline() as p:
        _ = p | io.ReadTfds(io.TfdsInput(conftest.TFDS_NAME, str(tmp_path)))
