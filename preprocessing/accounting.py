"""Every record accounted for: counts per input, records found in the files, the final check.

The job promises that every record it reads is either written to a split or listed in the
rejects file with its reason. The final step checks that promise on counts the job takes itself
before it writes metadata.json and COMPLETED: records read per input as the readers report them,
records written and rejected per input where they leave the pipeline, and the records in the
written files, counted by reading the files back. Any difference fails the job with the counts,
so no COMPLETED marker is written and the output is not moved into place.
"""

import collections

import apache_beam as beam
import tensorflow as tf

from preprocessing import records, write

READ, WRITTEN, REJECTED = "read", "written", "rejected"


class RecordsLostError(RuntimeError):
    """The counts do not add up: records were lost or duplicated after they were read."""


def _keyed_by_input(element, kind: str):
    return kind, records.input_of(element.origin)


class CountByInput(beam.PTransform):
    """Elements with an `origin` -> ((kind, input), count)."""

    def __init__(self, kind: str):
        super().__init__()
        self._kind = kind

    def expand(self, elements):
        return (
            elements
            | "KeyByInput" >> beam.Map(_keyed_by_input, self._kind)
            | "Count" >> beam.combiners.Count.PerElement()
        )


def _read_entry(input_and_count):
    source, count = input_and_count
    return (READ, source), count


class SumReadCounts(beam.PTransform):
    """The readers' (input, count) reports -> ((READ, input), total)."""

    def expand(self, reports):
        return reports | "Key" >> beam.Map(_read_entry) | "Sum" >> beam.CombinePerKey(sum)


class CountPerName(beam.PTransform):
    """(file set name, record) parts -> (file set name, records sent to it).

    Each part is counted where it is made and the counts are summed, so counting does not make
    the runner hold the records of all parts together.
    """

    def expand(self, parts):
        counts = [
            part
            | f"Names{index}" >> beam.Keys()
            | f"Count{index}" >> beam.combiners.Count.PerElement()
            for index, part in enumerate(parts)
        ]
        return counts | "AllCounts" >> beam.Flatten() | "Sum" >> beam.CombinePerKey(sum)


def _plus_one(count, _):
    return count + 1


def records_in_file(path: str, file_format: str) -> int:
    """Counts the records a written file holds, reading it back (TFRecord CRCs are checked)."""
    if file_format == write.TFRECORD:
        return int(tf.data.TFRecordDataset(path).reduce(tf.constant(0, tf.int64), _plus_one))
    with tf.io.gfile.GFile(path, "rb") as f:
        return sum(1 for _ in f)


def _count_file(name_and_path, file_sets: dict[str, write.FileSet]):
    name, path = name_and_path
    return name, records_in_file(path, file_sets[name].file_format)


class CountRecordsInFiles(beam.PTransform):
    """(file set name, path) of every written file -> (file set name, records in its files)."""

    def __init__(self, file_sets: dict[str, write.FileSet]):
        super().__init__()
        self._file_sets = file_sets

    def expand(self, files):
        return (
            files
            | "Count" >> beam.Map(_count_file, self._file_sets)
            | "Sum" >> beam.CombinePerKey(sum)
        )


def by_input(entries: list[tuple[tuple[str, str], int]]) -> dict[str, dict[str, int]]:
    """((kind, input), count) entries -> {input: {'read', 'written', 'rejected'}}, sorted."""
    table = collections.defaultdict(lambda: {READ: 0, WRITTEN: 0, REJECTED: 0})
    for (kind, source), count in entries:
        table[source][kind] += count
    return {source: table[source] for source in sorted(table)}


def _input_problems(table: dict[str, dict[str, int]]) -> list[str]:
    problems = []
    for source, counts in table.items():
        missing = counts[READ] - counts[WRITTEN] - counts[REJECTED]
        if missing:
            problems.append(
                f"  {source}: read {counts[READ]:,}, written {counts[WRITTEN]:,}, rejected "
                f"{counts[REJECTED]:,}: "
                + (f"{missing:,} missing" if missing > 0 else f"{-missing:,} extra")
            )
    return problems


def _file_problems(counted: dict[str, int], in_files: dict[str, int]) -> list[str]:
    return [
        f"  {name}: {counted.get(name, 0):,} records sent to the files, "
        f"{in_files.get(name, 0):,} in them"
        for name in sorted(set(counted) | set(in_files))
        if counted.get(name, 0) != in_files.get(name, 0)
    ]


def check(table: dict[str, dict[str, int]], counted: dict[str, int], in_files: dict[str, int]):
    """Raises unless every input adds up and the files hold what was sent to them.

    Args:
      table: `by_input` of the job's counts.
      counted: Records sent to each file set (each split's examples, all rejects).
      in_files: Records found in each file set's files.

    Raises:
      RecordsLostError: naming every input and file set whose counts differ.
    """
    inputs, files = _input_problems(table), _file_problems(counted, in_files)
    if not inputs and not files:
        return
    lines = []
    if inputs:
        read = sum(counts[READ] for counts in table.values())
        accounted = sum(counts[WRITTEN] + counts[REJECTED] for counts in table.values())
        lines += [
            f"Records were lost or duplicated: {read:,} read, {accounted:,} written or rejected.",
            "Inputs whose records do not add up (read = written + rejected):",
            *inputs,
        ]
    if files:
        lines += ["Records were lost in writing: files do not hold what was sent to them:", *files]
    lines += [
        "The dataset is incomplete and was not marked COMPLETED. This is a fault of the job or "
        "its runner, not of the data: please report it with this message, the command and the "
        "runner; rerunning may succeed."
    ]
    raise RecordsLostError("\n".join(lines))
