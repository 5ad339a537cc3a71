"""Sharded file output: the TFRecord shards of every split and the rejects file, in one sink.

Files are named `<prefix>-SSSSS-of-NNNNN<suffix>` as `pipeline.paths.DatasetLayout` expects.
A file set's shard count is fixed or chosen once its size is known: enough shards of at most
`TARGET_SHARD_BYTES`, and at least its `min_shards`. A record's shard is a checksum of its bytes,
so sharding is reproducible and balanced on any runner, and every shard file exists even when
empty. All file sets share one grouping step: each extra shuffle costs a stage on every runner.
"""

import dataclasses
import math
import os
import zlib

import apache_beam as beam
import tensorflow as tf

TFRECORD = "tfrecord"
TEXT = "text"
TARGET_SHARD_BYTES = 64 * 2**20


@dataclasses.dataclass(frozen=True)
class FileSet:
    """One group of shards.

    Attributes:
      prefix: Path prefix, e.g. `DatasetLayout.shard_prefix('train')`.
      suffix: File extension, e.g. '.tfrecord'.
      file_format: `TFRECORD` (records framed as TFRecords) or `TEXT` (one record per line).
      num_shards: Shard count; 0 chooses one from the data.
      min_shards: Fewest shards when choosing automatically.
    """

    prefix: str
    suffix: str
    file_format: str
    num_shards: int = 0
    min_shards: int = 1

    def __post_init__(self):
        if self.file_format not in (TFRECORD, TEXT):
            raise ValueError(f"Unknown file format {self.file_format!r}.")

    def shard_count(self, total_bytes: int) -> int:
        if self.num_shards:
            return self.num_shards
        return max(self.min_shards, math.ceil(total_bytes / TARGET_SHARD_BYTES))

    def path(self, index: int, num_shards: int) -> str:
        return f"{self.prefix}-{index:05d}-of-{num_shards:05d}{self.suffix}"


def _shard_counts(total_bytes: list[tuple[str, int]], file_sets: dict[str, FileSet]):
    sizes = dict(total_bytes)
    return {name: fs.shard_count(sizes.get(name, 0)) for name, fs in file_sets.items()}


def _key_by_shard(name_and_record, shard_counts):
    name, record = name_and_record
    return (name, zlib.crc32(record) % shard_counts[name]), record


def _every_shard(name: str, shard_counts):
    return [((name, index), None) for index in range(shard_counts[name])]


def _write_shard(key_and_records, file_sets: dict[str, FileSet], shard_counts):
    (name, index), values = key_and_records
    file_set = file_sets[name]
    path = file_set.path(index, shard_counts[name])
    tf.io.gfile.makedirs(os.path.dirname(path))
    present = (value for value in values if value is not None)
    if file_set.file_format == TFRECORD:
        with tf.io.TFRecordWriter(path) as writer:
            for record in present:
                writer.write(record)
    else:
        with tf.io.gfile.GFile(path, "wb") as f:
            f.write(b"")  # GFile creates its file on the first write; an empty shard must exist.
            for record in present:
                f.write(record + b"\n")
    return name, path


def _name_and_size(name: str, record: bytes) -> tuple[str, int]:
    return name, len(record)


class WriteFileSets(beam.PTransform):
    """(file set name, bytes) -> sharded files; outputs (name, path) for every shard written.

    Takes one PCollection of records or a tuple of them (parts made in different stages). Each
    part is sized where it is made, so the records are held once, not copied, while the runner
    waits for the shard counts: on the DirectRunner that wait holds every record in its process.
    A shard is written whole by one worker, so a retried write rewrites the same file with the
    same records.
    """

    def __init__(self, file_sets: dict[str, FileSet]):
        super().__init__()
        self._file_sets = file_sets

    def expand(self, named_records):
        file_sets = self._file_sets
        parts = named_records if isinstance(named_records, tuple) else (named_records,)
        shard_counts = beam.pvalue.AsSingleton(
            [
                part | f"Sizes{index}" >> beam.MapTuple(_name_and_size)
                for index, part in enumerate(parts)
            ]
            | "AllSizes" >> beam.Flatten()
            | "TotalBytes" >> beam.CombinePerKey(sum)
            | "SizesByName" >> beam.combiners.ToList()
            | "ShardCounts" >> beam.Map(_shard_counts, file_sets)
        )
        keyed = (
            parts
            | "AllRecords" >> beam.Flatten()
            | "KeyByShard" >> beam.Map(_key_by_shard, shard_counts)
        )
        every_shard = (
            parts[0].pipeline
            | "Names" >> beam.Create(sorted(file_sets))
            | "EveryShard" >> beam.FlatMap(_every_shard, shard_counts)
        )
        return (
            (keyed, every_shard)
            | "Flatten" >> beam.Flatten()
            | "GroupByShard" >> beam.GroupByKey()
            | "Write" >> beam.Map(_write_shard, file_sets, shard_counts)
        )
