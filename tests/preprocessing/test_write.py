"""Sharded output: exact file names, every shard present, every record written once."""

import glob
import zlib

import apache_beam as beam
import pytest
import tensorflow as tf
from apache_beam.options import pipeline_options
from apache_beam.testing import test_pipeline, util

from preprocessing import write


def _read_tfrecords(pattern):
    return sorted(r.numpy() for r in tf.data.TFRecordDataset(sorted(glob.glob(pattern))))


def test_file_sets_get_exact_names_every_shard_and_every_record_once(tmp_path):
    file_sets = {
        "train": write.FileSet(str(tmp_path / "train" / "train"), ".tfrecord", write.TFRECORD, 5),
        "dev": write.FileSet(str(tmp_path / "dev" / "dev"), ".tfrecord", write.TFRECORD, 0, 2),
        "log": write.FileSet(str(tmp_path / "log" / "log"), ".tsv", write.TEXT),
        "none": write.FileSet(str(tmp_path / "none" / "none"), ".tsv", write.TEXT),
    }
    records = [("train", f"record {i}".encode()) for i in range(3)] + [("log", b"a\tb")]
    with test_pipeline.TestPipeline() as p:
        written = p | beam.Create(records) | write.WriteFileSets(file_sets, str(tmp_path / "temp"))
        util.assert_that(
            written,
            util.equal_to(
                [
                    ("train", str(tmp_path / f"train/train-{i:05d}-of-00005.tfrecord"))
                    for i in range(5)
                ]
                + [("dev", str(tmp_path / f"dev/dev-{i:05d}-of-00002.tfrecord")) for i in range(2)]
                + [("log", str(tmp_path / "log/log-00000-of-00001.tsv"))]
                + [("none", str(tmp_path / "none/none-00000-of-00001.tsv"))]
            ),
        )
    assert _read_tfrecords(str(tmp_path / "train" / "*")) == [
        f"record {i}".encode() for i in range(3)
    ]
    assert _read_tfrecords(str(tmp_path / "dev" / "*")) == []
    assert (tmp_path / "log" / "log-00000-of-00001.tsv").read_bytes() == b"a\tb\n"
    assert (tmp_path / "none" / "none-00000-of-00001.tsv").read_bytes() == b""


def test_automatic_shard_count_grows_with_bytes():
    file_set = write.FileSet("x", ".tfrecord", write.TFRECORD, min_shards=4)
    assert file_set.shard_count(0) == 4
    assert file_set.shard_count(10 * write.TARGET_SHARD_BYTES + 1) == 11
    assert write.FileSet("x", ".tfrecord", write.TFRECORD, num_shards=3).shard_count(10**12) == 3


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="Unknown file format"):
        write.FileSet("x", ".csv", "csv")


def test_parts_made_apart_are_written_together_and_sized_together(tmp_path, monkeypatch):
    # 21 + 16 bytes: each part fits one 25-byte shard, the two together need two.
    monkeypatch.setattr(write, "TARGET_SHARD_BYTES", 25)
    file_sets = {"train": write.FileSet(str(tmp_path / "train"), ".tfrecord", write.TFRECORD)}
    first = [("train", f"first {i}".encode()) for i in range(3)]
    second = [("train", f"second {i}".encode()) for i in range(2)]
    with test_pipeline.TestPipeline() as p:
        parts = (p | "First" >> beam.Create(first), p | "Second" >> beam.Create(second))
        written = parts | write.WriteFileSets(file_sets, str(tmp_path / "temp"))
        util.assert_that(written | beam.combiners.Count.Globally(), util.equal_to([2]))
    assert sorted(_read_tfrecords(str(tmp_path / "train-*"))) == sorted(
        r for _, r in first + second
    )


def _leftover_spill(temp_dir, name, records):
    """A temporary file as an uncommitted (failed or duplicate) bundle attempt leaves it."""
    temp_dir.mkdir(parents=True, exist_ok=True)
    with open(temp_dir / f"0123456789abcdef-{name}", "wb") as f:
        for record in records:
            f.write(len(record).to_bytes(8, "little") + record)


def test_records_pass_through_temporary_files_once_and_the_files_are_removed(tmp_path):
    """Two worker threads, several bundles: each record once, in its checksum's shard.

    The leftover file stands for a retried bundle's first attempt: its records must not appear,
    since only spills named by committed outputs are finalized.
    """
    temp_dir = tmp_path / "temp"
    _leftover_spill(temp_dir, "train", [b"ghost 1", b"ghost 2"])
    file_sets = {
        "train": write.FileSet(str(tmp_path / "train"), ".tfrecord", write.TFRECORD, 3),
        "log": write.FileSet(str(tmp_path / "log"), ".tsv", write.TEXT, 2),
    }
    records = [("train", f"record {i}".encode()) for i in range(400)]
    records += [("log", f"line {i}".encode()) for i in range(50)]
    options = pipeline_options.PipelineOptions(
        direct_running_mode="multi_threading", direct_num_workers=2
    )
    with beam.Pipeline(options=options) as p:
        (
            p
            | beam.Create(records)
            | beam.Reshuffle()
            | write.WriteFileSets(file_sets, str(temp_dir))
        )
    for index in range(3):
        shard = _read_tfrecords(str(tmp_path / f"train-{index:05d}-of-00003.tfrecord"))
        assert shard == sorted(r for n, r in records if n == "train" and zlib.crc32(r) % 3 == index)
    lines = b"".join(
        (tmp_path / f"log-{index:05d}-of-00002.tsv").read_bytes() for index in range(2)
    )
    assert sorted(lines.splitlines()) == sorted(r for n, r in records if n == "log")
    assert not temp_dir.exists()


def test_a_cut_short_temporary_file_is_an_error(tmp_path):
    path = tmp_path / "spill"
    path.write_bytes((10).to_bytes(8, "little") + b"short")
    with pytest.raises(ValueError, match="ends inside a record"):
        list(write._read_spill(str(path)))
