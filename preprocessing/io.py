"""Readers: every kind of input becomes one PCollection of `records.Line`, one per input record.

Text inputs are opened with Beam's `FileSystems`, so any filesystem Beam has a plugin for works
(local, gs://, s3://, hdfs://) and `.gz`/`.bz2` files are decompressed by their extension. TSV
files are read in parallel, a large uncompressed one in byte ranges, each line keeping its number
for the rejects file (`preprocessing.ranges`); a compressed file, and each pair of aligned files,
is read by one worker. `ReadInputs` reshuffles afterwards so the rest of the job runs in
parallel.

Each reader also says how many records it read from each input (`records.input_of`), on a
second output: the job's accounting compares that, not a count taken downstream, with what was
written and rejected, so a record lost anywhere after the reader is caught.
"""

import collections
import dataclasses
import glob
import itertools
import logging

import apache_beam as beam
import tensorflow_datasets as tfds
from apache_beam.io import fileio, filesystems

from pipeline import paths
from preprocessing import output_dir, packed, progress, ranges, records

TFDS_PREFIX = "tfds:"
READ_COUNTS = "read_counts"
# A TFDS split mapped to HASH is split by hash like an input without splits; SKIP is not read.
HASH, SKIP = "hash", "skip"
SPLIT_TARGETS = (*paths.SPLITS, HASH, SKIP)
DEFAULT_TFDS_SPLITS = "train:train,validation:dev,test:test"


@dataclasses.dataclass(frozen=True)
class TsvInput:
    """A `source<TAB>target` file or glob, possibly compressed."""

    pattern: str


@dataclasses.dataclass(frozen=True)
class AlignedFilesInput:
    """Two files whose lines pair up one to one."""

    source: str
    target: str


@dataclasses.dataclass(frozen=True)
class TfdsInput:
    """A prepared TensorFlow Datasets translation set, read with its own splits.

    Attributes:
      name: `NAME[/CONFIG][:VERSION]`.
      data_dir: Where it is prepared (TFDS' default directory if None).
      splits: (TFDS split, job split) pairs: each TFDS split goes to 'train', 'dev' or 'test',
        is split by hash ('hash') or is not read ('skip').
    """

    name: str
    data_dir: str | None
    splits: tuple[tuple[str, str], ...] = ()

    def split_map(self) -> dict[str, str]:
        return dict(self.splits or parse_split_map(DEFAULT_TFDS_SPLITS))


InputSpec = TsvInput | AlignedFilesInput | TfdsInput


def _split_list(values: list[str] | None) -> list[str]:
    """Flattens repeated and comma-separated flag values."""
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


def parse_split_map(value: str) -> tuple[tuple[str, str], ...]:
    """Parses `--tfds_splits` (`tfds_split:job_split,...`).

    Raises:
      ValueError: naming a malformed entry or an unknown job split.
    """
    pairs = []
    for entry in _split_list([value]):
        tfds_split, _, job_split = entry.partition(":")
        if not tfds_split or job_split not in SPLIT_TARGETS:
            raise ValueError(
                f"--tfds_splits entry {entry!r} must be TFDS_SPLIT:SPLIT with SPLIT one of "
                f"{', '.join(SPLIT_TARGETS)}."
            )
        pairs.append((tfds_split.strip(), job_split))
    return tuple(pairs)


def parse_inputs(
    inputs: list[str] | None,
    source_inputs: list[str] | None = None,
    target_inputs: list[str] | None = None,
    tfds_data_dir: str | None = None,
    tfds_splits: str = DEFAULT_TFDS_SPLITS,
) -> list[InputSpec]:
    """Turns the input flags into input specs.

    Args:
      inputs: `--input` values: TSV paths or globs, or `tfds:NAME[/CONFIG][:VERSION]`.
      source_inputs: `--source_input` values, paired in order with `target_inputs`.
      target_inputs: `--target_input` values.
      tfds_data_dir: Where TFDS sets are prepared (TFDS' default directory if None).
      tfds_splits: `--tfds_splits`: what each TFDS split becomes.

    Returns:
      One spec per input, in flag order.

    Raises:
      ValueError: no input at all, source and target file lists of different lengths, or a
        malformed `tfds_splits`.
    """
    specs: list[InputSpec] = []
    split_map = parse_split_map(tfds_splits)
    for value in _split_list(inputs):
        if value.startswith(TFDS_PREFIX):
            specs.append(TfdsInput(value[len(TFDS_PREFIX) :], tfds_data_dir, split_map))
        else:
            specs.append(TsvInput(value))
    sources, targets = _split_list(source_inputs), _split_list(target_inputs)
    if len(sources) != len(targets):
        raise ValueError(
            f"--source_input has {len(sources)} file(s) but --target_input has {len(targets)}; "
            "give one target file for each source file, in the same order."
        )
    specs += [AlignedFilesInput(s, t) for s, t in zip(sources, targets, strict=True)]
    if not specs:
        raise ValueError(
            "No input: pass --input (TSV or tfds:NAME) or --source_input/--target_input."
        )
    return specs


def describe(spec: InputSpec) -> list[str]:
    """The paths or names a spec reads, for metadata.json."""
    if isinstance(spec, TsvInput):
        return [spec.pattern]
    if isinstance(spec, AlignedFilesInput):
        return [spec.source, spec.target]
    return [TFDS_PREFIX + spec.name]


def check_local_inputs(specs: list[InputSpec]) -> None:
    """Fails fast, before any worker starts, on a local input that does not exist.

    Remote paths are left to the workers: the launching machine may not reach them.

    Raises:
      FileNotFoundError: naming the flag value that matches nothing.
    """
    for spec in specs:
        if isinstance(spec, TfdsInput):
            continue
        for path in describe(spec):
            if output_dir.is_local(path) and not glob.glob(path.removeprefix("file://")):
                raise FileNotFoundError(f"Input {path!r} matches no file.")


def _strip_newline(line: bytes) -> bytes:
    return line.rstrip(b"\n").rstrip(b"\r")


def _counted(lines):
    """Passes `lines` through, then yields how many came from each input on `READ_COUNTS`."""
    counts = collections.Counter()
    for line in lines:
        counts[records.input_of(line.origin)] += 1
        yield line
    for source, count in counts.items():
        yield beam.pvalue.TaggedOutput(READ_COUNTS, (source, count))


def _tsv_line(path_number_line) -> records.Line:
    path, number, line = path_number_line
    raw = _strip_newline(line)
    return records.Line(f"{path}:{number}", raw, tuple(raw.split(b"\t")))


class ReadTsv(beam.PTransform):
    """Reads one TSV path or glob; a pattern that matches nothing fails the job.

    Files are read in parallel, and a large uncompressed file in ranges of `range_bytes` on many
    workers (`preprocessing.ranges`), every line keeping its number; each worker logs its read
    progress at most every `progress_seconds`. Outputs (lines, read counts): `records.Line`s,
    and (input, records read) per file or range.
    """

    def __init__(
        self,
        pattern: str,
        range_bytes: int = ranges.DEFAULT_RANGE_BYTES,
        progress_seconds: float = progress.DEFAULT_SECONDS,
    ):
        super().__init__()
        self._pattern = pattern
        self._range_bytes = range_bytes
        self._progress_seconds = progress_seconds

    def expand(self, pbegin):
        lines, counts = (
            pbegin
            | "Match" >> fileio.MatchFiles(self._pattern, fileio.EmptyMatchTreatment.DISALLOW)
            | "Lines" >> ranges.ReadLines(self._range_bytes, self._pattern, self._progress_seconds)
        )
        return lines | "ToRecords" >> beam.Map(_tsv_line), counts


def _read_aligned_files(spec: AlignedFilesInput, meter: progress.LazyMeter):
    return _counted(_metered(_aligned_lines(spec), spec, meter))


def _metered(lines, spec: AlignedFilesInput, meter: progress.LazyMeter):
    """Passes `lines` through, counting their bytes as read progress of both files.

    Compressed files count their size on disk once read whole, as their total does.
    """
    files = [spec.source, spec.target]
    matches = filesystems.FileSystems.match(files)
    total = sum(metadata.size_in_bytes for match in matches for metadata in match.metadata_list)
    by_line = not any(ranges.is_compressed(path) for path in files)
    read = 0
    for line in lines:
        if by_line:  # both sides (one, past the shorter file) and about their line endings
            meter.add(len(line.raw) + 1, total)
            read += len(line.raw) + 1
        yield line
    meter.add(max(total - read, 0), total)  # what lines missed (e.g. CRLF), or a compressed size
    meter.flush()


def _aligned_lines(spec: AlignedFilesInput):
    """Pairs line n of both files; lines past the shorter file are rejected one by one."""
    with (
        filesystems.FileSystems.open(spec.source) as source,
        filesystems.FileSystems.open(spec.target) as target,
    ):
        pairs = itertools.zip_longest(iter(source.readline, b""), iter(target.readline, b""))
        mismatch_logged = False
        for number, (source_line, target_line) in enumerate(pairs, start=1):
            if source_line is not None and target_line is not None:
                fields = (_strip_newline(source_line), _strip_newline(target_line))
                yield records.Line(f"{spec.source}:{number}", b"\t".join(fields), fields)
                continue
            path, line = (
                (spec.source, source_line) if target_line is None else (spec.target, target_line)
            )
            if not mismatch_logged:
                logging.warning(
                    "%s and %s have different line counts: %s:%d has no partner; it and every "
                    "later line are rejected as %s.",
                    spec.source,
                    spec.target,
                    path,
                    number,
                    records.LINE_COUNT_MISMATCH,
                )
                mismatch_logged = True
            raw = _strip_newline(line)
            yield records.Line(f"{path}:{number}", raw, (raw,), records.LINE_COUNT_MISMATCH)


class ReadAlignedFiles(beam.PTransform):
    """Reads a source file and a target file whose lines pair up one to one.

    Outputs (lines, read counts), as `ReadTsv`; logs read progress as `ReadTsv` does.
    """

    def __init__(self, spec: AlignedFilesInput, progress_seconds: float = progress.DEFAULT_SECONDS):
        super().__init__()
        self._spec = spec
        name = f"{spec.source} + {spec.target}"
        self._meter = progress.LazyMeter(name, progress_seconds, progress.BYTES, progress.READ)

    def expand(self, pbegin):
        outputs = (
            pbegin
            | "Files" >> beam.Create([self._spec])
            | "Lines"
            >> beam.FlatMap(_read_aligned_files, self._meter).with_outputs(
                READ_COUNTS, main="lines"
            )
        )
        return outputs.lines, outputs[READ_COUNTS]


def translation_keys(info: tfds.core.DatasetInfo) -> tuple[str, str]:
    """The (source, target) feature names of a TFDS translation set: its supervised keys.

    Raises:
      ValueError: the set declares no pair of supervised keys.
    """
    keys = info.supervised_keys
    if not (isinstance(keys, tuple) and len(keys) == 2 and all(isinstance(k, str) for k in keys)):
        raise ValueError(
            f"TFDS set {info.full_name} has supervised_keys={keys!r}; a translation set with "
            "two text features as (source, target) supervised keys is required."
        )
    return keys


class _ReadTfdsShardFn(beam.DoFn):
    """Reads one shard of one split of a prepared TFDS set; counts its examples as read progress
    of the `total` the job reads."""

    def __init__(self, spec: TfdsInput, total: int, progress_seconds: float):
        self._spec = spec
        self._total = total
        self._meter = progress.LazyMeter(
            f"{TFDS_PREFIX}{spec.name}", progress_seconds, progress.EXAMPLES, progress.READ
        )
        self._builder = None

    def setup(self):
        self._builder = tfds.builder(self._spec.name, data_dir=self._spec.data_dir)

    def process(self, split_and_shard: tuple[str, int]):
        return _counted(self._examples(*split_and_shard))

    def _examples(self, split: str, shard: int):
        source_key, target_key = translation_keys(self._builder.info)
        job_split = self._spec.split_map()[split]
        job_split = "" if job_split == HASH else job_split
        dataset = self._builder.as_dataset(split=f"{split}[{shard}shard]", shuffle_files=False)
        for index, example in enumerate(tfds.as_numpy(dataset)):
            fields = (example[source_key], example[target_key])
            origin = f"{TFDS_PREFIX}{self._spec.name}:{split}[{shard}shard]:{index}"
            self._meter.add(1, self._total)
            yield records.Line(origin, b"\t".join(fields), fields, split=job_split)
        self._meter.flush()


def tfds_splits_read(spec: TfdsInput, available: list[str]) -> list[str]:
    """The set's splits the job reads, in name order; says what else it does with the mapping.

    Raises:
      ValueError: the set has a split the mapping does not name, or none that it reads.
    """
    split_map = spec.split_map()
    unmapped = sorted(set(available) - set(split_map))
    if unmapped:
        raise ValueError(
            f"TFDS set {spec.name} has split(s) {', '.join(unmapped)} that --tfds_splits does not "
            f"map; map each to train, dev, test, hash or skip (e.g. --tfds_splits="
            f"{','.join(f'{s}:{t}' for s, t in split_map.items())},{unmapped[0]}:skip)."
        )
    read = sorted(s for s in available if split_map[s] != SKIP)
    if not read:
        raise ValueError(f"--tfds_splits skips every split of TFDS set {spec.name}.")
    given = {split_map[s] for s in read}
    for held_out in paths.SPLITS[1:]:
        if held_out not in given and HASH not in given:
            logging.warning(
                "TFDS set %s gives no %s split under --tfds_splits (its splits: %s): the %s "
                "split will be empty unless another input fills it; map a split to hash to "
                "carve it out by --%s_fraction.",
                spec.name,
                held_out,
                ", ".join(sorted(available)),
                held_out,
                held_out,
            )
    return read


class ReadTfds(beam.PTransform):
    """Reads a prepared TFDS translation set's splits as mapped, one shard per work item.

    The set's `dataset_info.json` is read when the pipeline is built, to list the shards.
    Outputs (lines, read counts), as `ReadTsv`.
    """

    def __init__(self, spec: TfdsInput, progress_seconds: float = progress.DEFAULT_SECONDS):
        super().__init__()
        self._spec = spec
        self._progress_seconds = progress_seconds

    def expand(self, pbegin):
        builder = tfds.builder(self._spec.name, data_dir=self._spec.data_dir)
        if not builder.info.splits.total_num_examples:
            raise ValueError(
                f"TFDS set {self._spec.name!r} has no prepared examples in "
                f"{builder.data_dir}: prepare it there or pass --tfds_data_dir."
            )
        translation_keys(builder.info)
        splits = builder.info.splits
        read = tfds_splits_read(self._spec, list(splits.keys()))
        shards = [
            (split, shard) for split in read for shard in range(len(splits[split].shard_lengths))
        ]
        total = sum(splits[split].num_examples for split in read)
        reader = _ReadTfdsShardFn(self._spec, total, self._progress_seconds)
        outputs = (
            pbegin
            | "Shards" >> beam.Create(shards)
            | "Examples" >> beam.ParDo(reader).with_outputs(READ_COUNTS, main="lines")
        )
        return outputs.lines, outputs[READ_COUNTS]


def _reader(spec: InputSpec, range_bytes: int, progress_seconds: float) -> beam.PTransform:
    if isinstance(spec, TsvInput):
        return ReadTsv(spec.pattern, range_bytes, progress_seconds)
    if isinstance(spec, AlignedFilesInput):
        return ReadAlignedFiles(spec, progress_seconds)
    return ReadTfds(spec, progress_seconds)


class ReadInputs(beam.PTransform):
    """Reads every input; uncompressed text files larger than `range_bytes` are read in ranges.

    Outputs (lines, read counts): one PCollection of `records.Line` spread over the workers, and
    (input, records read) pairs, several per input when it was read in parts. Readers log their
    progress at most every `progress_seconds`.
    """

    def __init__(
        self,
        specs: list[InputSpec],
        range_bytes: int = ranges.DEFAULT_RANGE_BYTES,
        progress_seconds: float = progress.DEFAULT_SECONDS,
    ):
        super().__init__()
        self._specs = specs
        self._range_bytes = range_bytes
        self._progress_seconds = progress_seconds

    def expand(self, pbegin):
        outputs = [
            pbegin | f"Read{index}" >> _reader(spec, self._range_bytes, self._progress_seconds)
            for index, spec in enumerate(self._specs)
        ]
        lines = [lines for lines, _ in outputs] | "Flatten" >> beam.Flatten()
        counts = [counts for _, counts in outputs] | "AllCounts" >> beam.Flatten()
        spread = (
            lines
            # Every line waits in this shuffle at once; packed, it is one small value each.
            | "Pack" >> beam.Map(packed.pack_line)
            | "Spread" >> beam.Reshuffle()
            | "Unpack" >> beam.Map(packed.unpack_line)
        )
        return spread, counts
