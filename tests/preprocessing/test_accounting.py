"""Accounting: counts per input, records read back from files, the check before COMPLETED."""

import apache_beam as beam
import pytest
import tensorflow as tf
from apache_beam.testing import test_pipeline, util

from preprocessing import accounting, records, write


def test_counts_are_kept_per_input_file_or_tfds_shard():
    rejects = [
        records.Reject(records.DUPLICATE, "a.tsv:3", b""),
        records.Reject(records.TOO_LONG, "a.tsv:10", b""),
        records.Reject(records.TOO_LONG, "tfds:wmt:train[2shard]:7", b""),
    ]
    with test_pipeline.TestPipeline() as p:
        rejected = p | "Rejects" >> beam.Create(rejects) | accounting.CountByInput("rejected")
        read = (
            p | "Reports" >> beam.Create([("a.tsv", 4), ("a.tsv", 6)]) | accounting.SumReadCounts()
        )
        util.assert_that(
            (rejected, read) | beam.Flatten(),
            util.equal_to(
                [
                    (("rejected", "a.tsv"), 2),
                    (("rejected", "tfds:wmt:train[2shard]"), 1),
                    (("read", "a.tsv"), 10),
                ]
            ),
        )


def test_by_input_fills_every_kind():
    table = accounting.by_input([(("read", "b"), 3), (("written", "b"), 3), (("read", "a"), 1)])
    assert table == {
        "a": {"read": 1, "written": 0, "rejected": 0},
        "b": {"read": 3, "written": 3, "rejected": 0},
    }


def test_records_are_counted_in_the_files_themselves(tmp_path):
    tfrecords, text = str(tmp_path / "a.tfrecord"), tmp_path / "b.tsv"
    with tf.io.TFRecordWriter(tfrecords) as writer:
        for index in range(5):
            writer.write(f"record\n{index}".encode())
    text.write_bytes(b"one\ntwo\n")
    assert accounting.records_in_file(tfrecords, write.TFRECORD) == 5
    assert accounting.records_in_file(str(text), write.TEXT) == 2


def test_check_passes_when_everything_adds_up():
    table = {"a": {"read": 5, "written": 3, "rejected": 2}}
    accounting.check(table, {"train": 3, "rejects": 2}, {"train": 3, "rejects": 2})


def test_check_names_each_input_that_lost_or_duplicated_records():
    table = {
        "a.tsv": {"read": 1_000_000, "written": 767_772, "rejected": 207_844},
        "b.tsv": {"read": 5, "written": 4, "rejected": 2},
        "c.tsv": {"read": 2, "written": 1, "rejected": 1},
    }
    with pytest.raises(accounting.RecordsLostError) as failure:
        accounting.check(table, {"train": 5}, {"train": 5})
    message = str(failure.value)
    assert "1,000,007 read, 975,624 written or rejected" in message
    assert "a.tsv: read 1,000,000, written 767,772, rejected 207,844: 24,384 missing" in message
    assert "b.tsv: read 5, written 4, rejected 2: 1 extra" in message
    assert "c.tsv" not in message
    assert "not marked COMPLETED" in message


def test_check_names_file_sets_whose_files_differ():
    table = {"a": {"read": 5, "written": 3, "rejected": 2}}
    with pytest.raises(accounting.RecordsLostError, match="rejects: 2 records sent .*, 1 in"):
        accounting.check(table, {"train": 3, "rejects": 2}, {"train": 3, "rejects": 1})
