"""Sharded, positioned training input (trainer/records.py, input_position.py, data.py).

Each input pipeline reads its own share of every epoch (the shares partition the split), and a
stream rebuilt from any batch's saved position continues exactly as the uninterrupted stream
does, across pools and epochs, for length-sorted pools and for buckets.
"""

import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf

from pipeline import config
from trainer import data, input_position, records


def _write_shards(root: str, files: int, per_file: int) -> list[str]:
    """TFRecord files whose records are their own numbers, 0 .. files * per_file - 1."""
    paths = []
    for f in range(files):
        path = os.path.join(root, f"train-{f:05d}-of-{files:05d}.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            for r in range(per_file):
                writer.write(str(f * per_file + r).encode())
        paths.append(path)
    return paths


def _numbers(dataset) -> list[int]:
    return [int(r[records.SERIALIZED]) for r in dataset.as_numpy_iterator()]


@pytest.mark.parametrize("files, stride", [(4, 1), (3, 2)])
def test_two_pipelines_split_every_epoch_into_disjoint_shares(tmp_path, files, stride):
    """4 files: two whole files each; 3 files: every other record of one common order."""
    paths = _write_shards(str(tmp_path), files, per_file=10)
    shares = [records.PipelineShare(paths, 2, pipeline) for pipeline in (0, 1)]
    assert [share.record_stride for share in shares] == [stride, stride]
    orders = []
    for epoch in (0, 1):
        first, second = (_numbers(share.epoch(epoch, 7, shuffle_block=8)) for share in shares)
        assert not set(first) & set(second)
        assert sorted(first + second) == list(range(files * 10))
        orders.append(first)
    assert orders[0] != orders[1], "each epoch has its own order"
    for global_seed in (0, 5):  # the order must not depend on TensorFlow's global seed
        tf.keras.utils.set_random_seed(global_seed)
        assert _numbers(shares[0].epoch(1, 7, 8)) == orders[1], "the same order when rebuilt"


@pytest.mark.parametrize("first_index", [3, 4, 9])
def test_a_stream_starts_at_any_record_of_any_epoch(tmp_path, first_index):
    """Blocks of 4 records: restarts before, at and after a block boundary."""
    share = records.PipelineShare(_write_shards(str(tmp_path), 2, per_file=5))
    later = _numbers(share.epoch(6, 3, 4)) + _numbers(share.epoch(7, 3, 4))
    assert sorted(later[:10]) == list(range(10)) and later[:10] != list(range(10))
    stream = share.stream(3, 4, first_epoch=6, first_index=first_index).take(10)
    assert _numbers(stream) == later[first_index : first_index + 10]
    positions = [(int(r[records.EPOCH]), int(r[records.INDEX])) for r in stream]
    assert positions[0] == (6, first_index) and positions[10 - first_index] == (7, 0)


def test_resume_position_reads_the_pipeline_row_or_restarts_the_next_epoch(caplog):
    table = np.array([[0, 3, 40, 9, 1], [1, 4, 2, 9, 1]], np.int64)
    two = [tf.distribute.InputContext(2, pipeline, 2) for pipeline in (0, 1)]
    assert input_position.resume_position(table, two[1], 300) == (1, 4, 2, 9, 1)
    empty = input_position.empty_table().numpy()
    assert input_position.resume_position(empty, two[1], 0) == (1, 0, 0, 0, -1)
    with caplog.at_level("WARNING"):
        moved = input_position.resume_position(table, None, 300)
    assert moved == (0, 5, 0, 300, -1)
    assert "written by 2 input pipelines (workers) and this run has 1" in caplog.text


@pytest.mark.parametrize("buckets", [False, True], ids=["sorted_pools", "buckets"])
def test_a_pipeline_rebuilt_from_a_batch_position_continues_exactly(small_dataset, buckets):
    """Pipeline 2 of 2, two replicas each, small pools: positions cross pools and epochs."""
    cfg = config.build_config(
        "attention_seq2seq/tiny",
        params_override=f"data.data_dir={small_dataset.root},data.sort_pool=2",
    )
    cfg = dataclasses.replace(cfg.data, shuffle_buffer=64)
    context = tf.distribute.InputContext(2, 1, 4)

    def slices(resume_after, count):
        dataset = data.make_train_dataset(
            cfg, 7, context, resume_after=resume_after, pad_to_buckets=buckets
        )
        return list(dataset.take(count).as_numpy_iterator())

    reference = slices(None, 2 * 40)
    assert reference[1][data.SOURCE_IDS].shape[0] == cfg.batch_size // 4
    epochs = {int(s[data.INPUT_POSITION][1]) for s in reference}
    assert len(epochs) >= 2, "the positions must cross an epoch"
    for step in (0, 9, 22):
        position = input_position.InputPosition(*reference[2 * step][data.INPUT_POSITION])
        assert position.pipeline == 1
        rebuilt = slices(position, 8)
        for expected, actual in zip(reference[2 * step + 2 :], rebuilt, strict=False):
            for key, value in expected.items():
                np.testing.assert_array_equal(actual[key], value, err_msg=f"{step} {key}")
