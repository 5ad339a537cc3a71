"""Raw TFRecord streams: a split's shard files, one input pipeline's share, its epoch order.

Training input is sharded by input pipeline (one per worker; `tf.distribute.InputContext`): each
pipeline reads and parses only its share, so input work per worker falls as 1/N. The share is
whole files when the files divide evenly among the pipelines, else every N-th record of one
common order (every pipeline then reads all raw bytes but parses only its own records; reading
is cheap next to parsing).

A pipeline's stream is a sequence of epochs. Epoch `e` visits its share once, in an order that
depends only on the seed and `e`, and each record carries its (epoch, index) in that order. So
the stream can restart at any record of any epoch without reading earlier epochs: at most part
of one epoch's raw records are read past again, and none is parsed again.
"""

import tensorflow as tf

from pipeline import paths

SERIALIZED = "serialized"
EPOCH = "epoch"
INDEX = "index"

# Files read at once; fixed so the record order does not depend on the machine.
_CYCLE_LENGTH = 4
# A large prime: (seed, epoch) pairs map to distinct shuffle seeds for any realistic epoch.
_EPOCH_STRIDE = 1_000_003


def shard_files(layout: paths.DatasetLayout, split: str) -> list[str]:
    """The split's shard files, sorted so every process lists them in one order."""
    files = tf.io.gfile.glob(layout.shard_pattern(split))
    if not files:
        raise FileNotFoundError(f"No {split} shards match {layout.shard_pattern(split)}.")
    return sorted(files)


def read_in_order(files: list[str]) -> tf.data.Dataset:
    """Serialised records of `files`, interleaved in a fixed, deterministic order."""
    return tf.data.Dataset.from_tensor_slices(files).interleave(
        tf.data.TFRecordDataset,
        cycle_length=_CYCLE_LENGTH,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


class PipelineShare:
    """Which records of a split one input pipeline reads: whole files, or every N-th record."""

    def __init__(self, files: list[str], num_pipelines: int = 1, pipeline_id: int = 0):
        if num_pipelines > 1 and len(files) % num_pipelines == 0:
            self.files = files[pipeline_id::num_pipelines]
            self.record_stride = 1
        else:
            self.files = files
            self.record_stride = num_pipelines
        self.pipeline_id = pipeline_id
        if not any(tf.io.gfile.stat(path).length for path in self.files):
            # An empty share would make the endless stream spin through empty epochs.
            raise ValueError(
                f"Input pipeline {pipeline_id} of {num_pipelines} has no records to read: "
                f"{', '.join(self.files)} are empty."
            )

    def epoch(self, epoch, seed: int, shuffle_block: int, first_index=0) -> tf.data.Dataset:
        """One epoch of this share, from record `first_index` on, in the epoch's order.

        The order shuffles the files, then each block of `shuffle_block` consecutive records,
        with stateless permutations keyed on (seed, epoch, block): a pure function of those,
        whatever the process's global seed, and cheap to restart: whole blocks before
        `first_index` are read past unshuffled.

        Returns:
          {SERIALIZED, EPOCH, INDEX} elements; INDEX counts records from the epoch's start.
        """
        epoch = tf.cast(epoch, tf.int64)
        epoch_seed = tf.stack([tf.constant(seed, tf.int64), epoch])
        files = tf.random.experimental.stateless_shuffle(tf.constant(self.files), epoch_seed)
        records = tf.data.Dataset.from_tensor_slices(files).interleave(
            tf.data.TFRecordDataset,
            cycle_length=_CYCLE_LENGTH,
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        if self.record_stride > 1:
            records = records.shard(self.record_stride, self.pipeline_id)
        first_block = first_index // shuffle_block
        blocks = records.skip(first_block * shuffle_block).batch(shuffle_block)

        def permute(block_number, block):
            block_seed = tf.stack([seed * _EPOCH_STRIDE + epoch, block_number])
            return tf.random.experimental.stateless_shuffle(block, block_seed)

        records = blocks.enumerate(first_block).map(permute).unbatch()
        records = records.enumerate(first_block * shuffle_block).skip(
            first_index - first_block * shuffle_block
        )
        return records.map(lambda index, record: {SERIALIZED: record, EPOCH: epoch, INDEX: index})

    def stream(
        self, seed: int, shuffle_block: int, first_epoch: int = 0, first_index: int = 0
    ) -> tf.data.Dataset:
        """Endless epochs from record `first_index` of epoch `first_epoch` on.

        Positioning costs reading past the `first_index` raw records before it in its epoch
        (parsing none of them), whatever the epoch number.
        """
        start = self.epoch(first_epoch, seed, shuffle_block, first_index)
        later = tf.data.Dataset.range(first_epoch + 1, tf.int64.max)
        return start.concatenate(
            later.flat_map(lambda epoch: self.epoch(epoch, seed, shuffle_block))
        )
