"""Sharded file output: the TFRecord shards of every split and the rejects file, in one sink.

Files are named `<prefix>-SSSSS-of-NNNNN<suffix>` as `pipeline.paths.DatasetLayout` expects.
A file set's shard count is fixed or chosen once its size is known: enough shards of at most
`TARGET_SHARD_BYTES`, and at least its `min_shards`. A record's shard is a checksum of its bytes,
so sharding is reproducible and balanced on any runner, and every shard file exists even when
empty.

Records never pass through the runner. The DirectRunner's engine keeps every element of a
shuffle in its own process, so grouping the records by shard held the whole dataset there. As
Beam's own file sinks do, each worker bundle instead spills its records to one temporary file
per file set, and only file names cross the shuffles:

  records -> Spill (per bundle: a temporary file per file set, sized and counted)
          -> SplitByShard (per temporary file: one part file per shard, once the counts are known)
          -> GroupByShard (part file names) -> Write (parts concatenated into the shard)
          -> RemoveTemporaryFiles

TFRecord and text files stay valid when concatenated byte by byte. Only files named by the
runner's committed outputs are used, so a retried bundle's leftover files are never written
twice; they go with the temporary directory at the end.
"""

import dataclasses
import math
import os
import struct
import uuid
import zlib

import apache_beam as beam
import tensorflow as tf
from apache_beam.transforms import window
from apache_beam.utils import windowed_value

TFRECORD = "tfrecord"
TEXT = "text"
TARGET_SHARD_BYTES = 64 * 2**20
# A temporary file is a sequence of (little-endian uint64 length, record bytes).
_LENGTH = struct.Struct("<Q")
_BUFFER_BYTES = 4 * 2**20


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


@dataclasses.dataclass(frozen=True)
class _Spill:
    """One bundle's records of one file set, in a temporary file."""

    name: str
    path: str
    records: int
    num_bytes: int


class _BufferedWriter:
    """Writes framed records to a file in large blocks (one small write per record is slow)."""

    def __init__(self, path: str, frame):
        self.path = path
        self._file = tf.io.gfile.GFile(path, "wb")
        self._file.write(b"")  # GFile creates its file on the first write; an empty one must exist.
        self._frame = frame
        self._buffer = bytearray()
        self.records = self.num_bytes = 0

    def write(self, record: bytes) -> None:
        self._buffer += self._frame(record)
        self.records += 1
        self.num_bytes += len(record)
        if len(self._buffer) >= _BUFFER_BYTES:
            self._flush()

    def _flush(self) -> None:
        self._file.write(bytes(self._buffer))
        self._buffer.clear()

    def close(self) -> None:
        self._flush()
        self._file.close()


def _length_prefixed(record: bytes) -> bytes:
    return _LENGTH.pack(len(record)) + record


def _line(record: bytes) -> bytes:
    return record + b"\n"


def _read_spill(path: str):
    """Yields the records of a temporary file in the order they were written."""
    pending = b""
    with tf.io.gfile.GFile(path, "rb") as f:
        while chunk := f.read(_BUFFER_BYTES):
            data = memoryview(pending + chunk)
            offset = 0
            while offset + _LENGTH.size <= len(data):
                (length,) = _LENGTH.unpack_from(data, offset)
                end = offset + _LENGTH.size + length
                if end > len(data):
                    break
                yield bytes(data[offset + _LENGTH.size : end])
                offset = end
            pending = bytes(data[offset:])
    if pending:
        raise ValueError(f"Temporary file {path} ends inside a record: it was cut short.")


class _SpillRecords(beam.DoFn):
    """(file set name, record) -> one `_Spill` per file set at the end of each bundle."""

    def __init__(self, temp_dir: str):
        super().__init__()
        self._temp_dir = temp_dir
        self._writers = {}

    def start_bundle(self):
        self._writers = {}

    def process(self, name_and_record):
        name, record = name_and_record
        writer = self._writers.get(name)
        if writer is None:
            tf.io.gfile.makedirs(self._temp_dir)
            # Unique per attempt: a retried bundle never overwrites a file another attempt made.
            path = os.path.join(self._temp_dir, f"{uuid.uuid4().hex}-{name}")
            writer = self._writers[name] = _BufferedWriter(path, _length_prefixed)
        writer.write(record)

    def finish_bundle(self):
        for name, writer in sorted(self._writers.items()):
            writer.close()
            yield windowed_value.WindowedValue(
                _Spill(name, writer.path, writer.records, writer.num_bytes),
                window.GlobalWindow().max_timestamp(),
                (window.GlobalWindow(),),
            )
        self._writers = {}


def _name_and_size(spill: _Spill) -> tuple[str, int]:
    return spill.name, spill.num_bytes


def _shard_counts(total_bytes: list[tuple[str, int]], file_sets: dict[str, FileSet]):
    sizes = dict(total_bytes)
    return {name: fs.shard_count(sizes.get(name, 0)) for name, fs in file_sets.items()}


def _part_path(spill: _Spill, index: int) -> str:
    return f"{spill.path}.{index:05d}"


def _open_part(path: str, file_format: str):
    if file_format == TFRECORD:
        return tf.io.TFRecordWriter(path)
    return _BufferedWriter(path, _line)


def _split_by_shard(spill: _Spill, file_sets: dict[str, FileSet], shard_counts):
    """Writes a temporary file's records to one part file per shard; yields (shard, part path).

    Part names follow from the temporary file's, so a retry rewrites the same parts.
    """
    num_shards = shard_counts[spill.name]
    file_format = file_sets[spill.name].file_format
    parts = {}
    try:
        for record in _read_spill(spill.path):
            index = zlib.crc32(record) % num_shards
            part = parts.get(index)
            if part is None:
                part = parts[index] = _open_part(_part_path(spill, index), file_format)
            part.write(record)
    finally:
        for part in parts.values():
            part.close()
    return [((spill.name, index), _part_path(spill, index)) for index in sorted(parts)]


def _every_shard(name: str, shard_counts):
    return [((name, index), None) for index in range(shard_counts[name])]


def _write_shard(key_and_parts, file_sets: dict[str, FileSet], shard_counts):
    """Concatenates a shard's part files, in name order, into the shard's file."""
    (name, index), parts = key_and_parts
    path = file_sets[name].path(index, shard_counts[name])
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "wb") as shard:
        shard.write(b"")  # An empty shard must exist too.
        for part in sorted(part for part in parts if part is not None):
            with tf.io.gfile.GFile(part, "rb") as f:
                while chunk := f.read(_BUFFER_BYTES):
                    shard.write(chunk)
    return name, path


def _remove_temp_dir(unused_count, temp_dir: str) -> None:
    if tf.io.gfile.exists(temp_dir):
        tf.io.gfile.rmtree(temp_dir)


def _after_cleanup(name_and_path, unused_cleanup):
    return name_and_path


class WriteFileSets(beam.PTransform):
    """(file set name, bytes) -> sharded files; outputs (name, path) for every shard written.

    Takes one PCollection of records or a tuple of them (parts made in different stages); each
    part is spilled to temporary files where it is made. The output comes after the temporary
    directory is removed, so a step that waits for it finds only the shards.
    """

    def __init__(self, file_sets: dict[str, FileSet], temp_dir: str):
        """`temp_dir`: a directory of this job alone, on the output's filesystem; removed."""
        super().__init__()
        self._file_sets = file_sets
        self._temp_dir = temp_dir

    def expand(self, named_records):
        file_sets = self._file_sets
        parts = named_records if isinstance(named_records, tuple) else (named_records,)
        spills = [
            part | f"Spill{index}" >> beam.ParDo(_SpillRecords(self._temp_dir))
            for index, part in enumerate(parts)
        ] | "AllSpills" >> beam.Flatten()
        shard_counts = beam.pvalue.AsSingleton(
            spills
            | "Sizes" >> beam.Map(_name_and_size)
            | "TotalBytes" >> beam.CombinePerKey(sum)
            | "SizesByName" >> beam.combiners.ToList()
            | "ShardCounts" >> beam.Map(_shard_counts, file_sets)
        )
        shard_parts = spills | "SplitByShard" >> beam.FlatMap(
            _split_by_shard, file_sets, shard_counts
        )
        every_shard = (
            parts[0].pipeline
            | "Names" >> beam.Create(sorted(file_sets))
            | "EveryShard" >> beam.FlatMap(_every_shard, shard_counts)
        )
        written = (
            (shard_parts, every_shard)
            | "Flatten" >> beam.Flatten()
            | "GroupByShard" >> beam.GroupByKey()
            | "Write" >> beam.Map(_write_shard, file_sets, shard_counts)
        )
        cleanup = (
            written
            | "CountWritten" >> beam.combiners.Count.Globally()
            | "RemoveTemporaryFiles" >> beam.Map(_remove_temp_dir, self._temp_dir)
        )
        return written | "AfterCleanup" >> beam.Map(
            _after_cleanup, beam.pvalue.AsSingleton(cleanup)
        )
