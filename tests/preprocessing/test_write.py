"""Sharded output: exact file names, every shard present, every record written once."""

import glob

import apache_beam as beam
import pytest
import tensorflow as tf
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
        written = p | beam.Create(records) | write.WriteFileSets(file_sets)
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
        written = parts | write.WriteFileSets(file_sets)
        util.assert_that(written | beam.combiners.Count.Globally(), util.equal_to([2]))
    assert sorted(_read_tfrecords(str(tmp_path / "train-*"))) == sorted(
        r for _, r in first + second
    )
