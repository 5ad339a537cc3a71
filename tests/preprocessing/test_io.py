"""Readers: every input record becomes one Line with its origin, whatever the input kind."""

import dataclasses
import gzip
import logging
import re

import apache_beam as beam
import pytest
from apache_beam.testing import test_pipeline, util

from preprocessing import io, progress, records
from tests.preprocessing import conftest


def test_parse_inputs_accepts_repeats_commas_pairs_and_tfds():
    specs = io.parse_inputs(
        ["a.tsv,b/*.tsv.gz", "tfds:wmt14_translate/de-en"], ["x.en"], ["x.de"], "/data"
    )
    assert specs == [
        io.TsvInput("a.tsv"),
        io.TsvInput("b/*.tsv.gz"),
        io.TfdsInput("wmt14_translate/de-en", "/data", io.parse_split_map(io.DEFAULT_TFDS_SPLITS)),
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


@pytest.mark.parametrize("name, range_bytes", [("in.tsv.gz", 4), ("in.tsv", 4), ("in.tsv", 100)])
def test_read_tsv_numbers_lines_and_keeps_raw_bytes(tmp_path, name, range_bytes):
    """Compressed, cut into 4-byte ranges (several per line), or read whole: the same lines."""
    path = tmp_path / name
    with (gzip.open if name.endswith(".gz") else open)(path, "wb") as f:
        f.write(b"a\tb\r\nbad \xff\tx\nno tab\n\tlast")
    with test_pipeline.TestPipeline() as p:
        lines, counts = p | io.ReadTsv(str(tmp_path / "in.tsv*"), range_bytes)
        util.assert_that(
            counts | beam.CombinePerKey(sum), util.equal_to([(str(path), 4)]), label="CheckCounts"
        )
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


def _read_progress(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == progress.__name__]


def test_read_aligned_files_marks_every_unpaired_line(tmp_path, caplog):
    source, target = tmp_path / "s.txt", tmp_path / "t.txt"
    source.write_bytes(b"one\ntwo\n")
    target.write_bytes(b"eins\nzwei\ndrei\nvier\n")
    spec = io.AlignedFilesInput(str(source), str(target))
    mismatch = records.LINE_COUNT_MISMATCH
    caplog.set_level(logging.INFO)
    with test_pipeline.TestPipeline() as p:
        lines, counts = p | io.ReadAlignedFiles(spec, progress_seconds=0)
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
    # Both files' bytes are the input's size, and all of it is read.
    assert re.fullmatch(
        rf"Read progress: worker \d+ has read 28 of 28 bytes of {source} \+ {target} in .*",
        _read_progress(caplog)[-1],
    )


def _origin_and_split(line):
    return line.origin.rsplit(":", 1)[0], line.split


def test_read_tfds_keeps_the_sets_own_splits(tfds_data_dir, caplog):
    spec = io.parse_inputs([f"tfds:{conftest.TFDS_NAME}"], tfds_data_dir=tfds_data_dir)[0]
    pairs = conftest.tfds_split_pairs()
    expected = [f"{s}\t{t}".encode() for chunk in pairs.values() for s, t in chunk]
    prefix = f"tfds:{conftest.TFDS_NAME}"
    caplog.set_level(logging.INFO)
    with test_pipeline.TestPipeline() as p:
        lines, counts = p | io.ReadInputs([spec], progress_seconds=0)
        util.assert_that(lines | beam.Map(lambda line: line.raw), util.equal_to(expected))
        util.assert_that(
            lines | "Splits" >> beam.Map(_origin_and_split),
            util.equal_to(
                [(f"{prefix}:train[0shard]", "train")] * 30
                + [(f"{prefix}:validation[0shard]", "dev")] * 11
                + [(f"{prefix}:test[0shard]", "test")] * 7
            ),
            label="CheckSplits",
        )
        util.assert_that(
            counts,
            util.equal_to(
                [(f"{prefix}:{name}[0shard]", len(chunk)) for name, chunk in pairs.items()]
            ),
            label="CheckCounts",
        )
    # Read progress counts examples of every split read, summed over the shards.
    assert re.fullmatch(
        rf"Read progress: worker \d+ has read 48 of 48 examples of {prefix} in .*",
        _read_progress(caplog)[-1],
    )


def test_tfds_split_map_can_hash_or_skip_splits(tfds_data_dir):
    spec = io.parse_inputs(
        [f"tfds:{conftest.TFDS_NAME}"], None, None, tfds_data_dir, "train:hash,validation:skip"
    )[0]
    assert io.tfds_splits_read(spec, ["train", "validation"]) == ["train"]
    with test_pipeline.TestPipeline() as p:
        lines, _ = p | io.ReadTfds(
            dataclasses.replace(spec, splits=spec.splits + (("test", "skip"),))
        )
        util.assert_that(lines | beam.Map(lambda line: line.split), util.equal_to([""] * 30))


@pytest.mark.parametrize(
    "mapping, available, message",
    [
        ("train:train", ["train", "test"], "split\\(s\\) test that --tfds_splits does not map"),
        ("train:skip,test:skip", ["train", "test"], "skips every split"),
    ],
)
def test_tfds_split_map_refuses_unmapped_or_no_splits(mapping, available, message):
    spec = io.TfdsInput("x", None, io.parse_split_map(mapping))
    with pytest.raises(ValueError, match=message):
        io.tfds_splits_read(spec, available)


def test_tfds_split_map_refuses_unknown_targets():
    with pytest.raises(ValueError, match="'train:valid' must be TFDS_SPLIT:SPLIT"):
        io.parse_split_map("train:valid")


def test_read_tfds_refuses_a_set_that_is_not_prepared(tmp_path):
    with pytest.raises(ValueError, match="no prepared examples"), test_pipeline.TestPipeline() as p:
        _ = p | io.ReadTfds(io.TfdsInput(conftest.TFDS_NAME, str(tmp_path)))
