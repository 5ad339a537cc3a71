"""Large uncompressed text files read in byte ranges by many workers, with exact line numbers.

A file larger than `range_bytes` is cut into ranges of that size; a line belongs to the range
its first byte is in. The rejects file names every line by `file:line`, so a range must know how
many lines come before it: a first, cheap pass counts the line starts in each range
(`bytes.count` over the range, in parallel), and each reader numbers its lines from the sum of the
counts before it. Compressed files cannot be entered in the middle and are read whole by one
worker: give a large corpus as several compressed files, or uncompressed, to read it in parallel.
"""

from typing import NamedTuple

import apache_beam as beam
from apache_beam.io import filesystem, filesystems

from preprocessing import progress

DEFAULT_RANGE_BYTES = 64 * 2**20
_COUNT_CHUNK = 8 * 2**20
LINE_COUNTS = "line_counts"


class Range(NamedTuple):
    """Bytes [start, end) of a file; `index` orders a file's ranges."""

    path: str
    index: int
    start: int
    end: int
    size: int

    @property
    def whole_file(self) -> bool:
        return self.start == 0 and self.end >= self.size


def _open(path: str, whole_file: bool):
    # Decompress by extension when reading a whole file; a range is only ever uncompressed.
    compression = (
        filesystem.CompressionTypes.AUTO if whole_file else filesystem.CompressionTypes.UNCOMPRESSED
    )
    return filesystems.FileSystems.open(path, compression_type=compression)


def is_compressed(path: str) -> bool:
    """Whether Beam decompresses `path` by its extension (then it is read whole)."""
    return (
        filesystem.CompressionTypes.detect_compression_type(path)
        != filesystem.CompressionTypes.UNCOMPRESSED
    )


def plan(metadata: filesystem.FileMetadata, range_bytes: int) -> list[Range]:
    """The ranges of one file: one for a small or compressed file, else `range_bytes` each."""
    path, size = metadata.path, metadata.size_in_bytes
    if is_compressed(path) or size <= range_bytes:
        return [Range(path, 0, 0, max(size, 1), size)]
    return [
        Range(path, index, start, min(start + range_bytes, size), size)
        for index, start in enumerate(range(0, size, range_bytes))
    ]


def count_line_starts(piece: Range) -> int:
    """Lines whose first byte is in the range (a split file only)."""
    count = 1 if piece.start == 0 and piece.size else 0
    # A newline at byte p starts a line at p + 1, which must lie in [start, min(end, size)).
    first, stop = max(piece.start - 1, 0), min(piece.end, piece.size) - 1
    with _open(piece.path, whole_file=False) as f:
        f.seek(first)
        position = first
        while position < stop:
            chunk = f.read(min(_COUNT_CHUNK, stop - position))
            if not chunk:
                break
            count += chunk.count(b"\n")
            position += len(chunk)
    return count


def read_lines(piece: Range, first_number: int):
    """Yields (line number, line with its line ending) for the lines starting in the range."""
    with _open(piece.path, piece.whole_file) as f:
        if piece.whole_file:
            yield from enumerate(iter(f.readline, b""), start=first_number)
            return
        if piece.start:
            f.seek(piece.start - 1)
            if f.read(1) != b"\n":
                f.readline()  # The rest of a line that started in the previous range.
        number = first_number
        while f.tell() < piece.end:
            line = f.readline()
            if not line:
                return
            yield number, line
            number += 1


def _key(piece: Range):
    return piece.path, piece.index


def _count(piece: Range):
    if piece.whole_file:
        return []
    return [(_key(piece), count_line_starts(piece))]


def _size(metadata: filesystem.FileMetadata) -> int:
    return metadata.size_in_bytes


def _numbered_lines(piece: Range, line_starts: dict, meter: progress.LazyMeter, total_bytes: int):
    lines_before = sum(line_starts[piece.path, index] for index in range(piece.index))
    # A compressed file's lines are longer than its bytes on disk: it counts its size once read.
    by_line = not is_compressed(piece.path)
    count = 0
    for number, line in read_lines(piece, lines_before + 1):
        count += 1
        if by_line:
            meter.add(len(line), total_bytes)
        yield piece.path, number, line
    if not by_line:
        meter.add(piece.size, total_bytes)
    meter.flush()
    yield beam.pvalue.TaggedOutput(LINE_COUNTS, (piece.path, count))


class ReadLines(beam.PTransform):
    """File metadata (`fileio.MatchFiles` output) -> (lines, line counts).

    Lines are (path, line number, line with its line ending); line counts are (path, lines read)
    per range, as the reader saw them. A large uncompressed file is read in ranges on many
    workers. Each worker logs how much of the input (`name`, every file it matched) it has read,
    at most every `progress_seconds` (`progress.Meter`).
    """

    def __init__(
        self,
        range_bytes: int,
        name: str = "the input",
        progress_seconds: float = progress.DEFAULT_SECONDS,
    ):
        super().__init__()
        if range_bytes < 1:
            raise ValueError(f"range_bytes must be positive, got {range_bytes}.")
        self._range_bytes = range_bytes
        self._meter = progress.LazyMeter(name, progress_seconds, progress.BYTES, progress.READ)

    def expand(self, files):
        pieces = files | "Plan" >> beam.FlatMap(plan, self._range_bytes)
        line_starts = pieces | "CountLineStarts" >> beam.FlatMap(_count)
        total_bytes = files | "Sizes" >> beam.Map(_size) | "TotalSize" >> beam.CombineGlobally(sum)
        outputs = (
            pieces
            | "Spread" >> beam.Reshuffle()
            | "Read"
            >> beam.FlatMap(
                _numbered_lines,
                beam.pvalue.AsDict(line_starts),
                self._meter,
                beam.pvalue.AsSingleton(total_bytes),
            ).with_outputs(LINE_COUNTS, main="lines")
        )
        return outputs.lines, outputs[LINE_COUNTS]
