"""The preprocessing pipeline, defined once for every runner.

ReadInputs -> CleanPairs -> DropDuplicates -> AssignSplits -> TokenizePairs -> FilterLengths
                                                   |                ^               |
                                      train only -> LearnVocabularies      EncodeExamples
                                                   (side input)                     |
rejects of CleanPairs, DropDuplicates and FilterLengths --------------------> WriteFiles
counts, fingerprint, histograms, vocabulary and file lists -> WriteMetadata (COMPLETED last)

WriteMetadata first checks, per input, that records read = written + rejected, and that the
files hold the records sent to them (`accounting`); if not, the job fails without COMPLETED.
"""

import dataclasses
import os

import apache_beam as beam

from pipeline import paths
from preprocessing import (
    accounting,
    clean,
    encode,
    io,
    progress,
    ranges,
    records,
    split,
    summary,
    vocabulary,
    write,
)


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """What the job does; built from flags by `preprocessing.main` and nothing else.

    Attributes:
      inputs: Input specs from `io.parse_inputs`.
      reverse: Swap source and target of every input.
      max_chars: Longest raw side in characters (0: no limit).
      max_length: Longest side in subword pieces.
      max_length_ratio: Largest longer/shorter ratio in pieces (0: no limit).
      dev_fraction: Share of source sentences in dev.
      test_fraction: Share of source sentences in test.
      num_shards: TFRecord shards per split (0: automatic).
      vocab: How vocabularies are learned.
      input_range_bytes: Uncompressed text inputs larger than this are read in ranges of this
        size by parallel workers.
      progress_seconds: Least seconds between two progress lines of a worker (and, on the
        DirectRunner, of the console).
    """

    inputs: tuple[io.InputSpec, ...]
    reverse: bool = False
    max_chars: int = 1000
    max_length: int = 64
    max_length_ratio: float = 9.0
    dev_fraction: float = 0.03
    test_fraction: float = 0.03
    num_shards: int = 0
    vocab: vocabulary.VocabParams = vocabulary.VocabParams()
    input_range_bytes: int = ranges.DEFAULT_RANGE_BYTES
    progress_seconds: float = progress.DEFAULT_SECONDS

    def __post_init__(self):
        split.check_fractions(self.dev_fraction, self.test_fraction)
        for name in ("max_chars", "num_shards", "max_length_ratio"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must not be negative, got {getattr(self, name)}.")
        if self.input_range_bytes < 1:
            raise ValueError("--input_range_mb must be positive.")
        if self.progress_seconds < 0:
            raise ValueError(
                f"--progress_seconds must not be negative, got {self.progress_seconds}."
            )
        if self.max_length < 1:
            raise ValueError(f"--max_length must be positive, got {self.max_length}.")
        if 0 < self.max_length_ratio < 1:
            raise ValueError(
                f"--max_length_ratio={self.max_length_ratio} would reject every pair: a ratio "
                "of longer to shorter side is at least 1 (use 0 for no limit)."
            )


REJECTS = "rejects"
TEMP_DIR = "write-temp"
# tf.data gives each input worker whole shard files; a few shards per split let up to that many
# workers (MultiWorkerMirrored, TPU hosts) share even a small dataset.
MIN_AUTO_SHARDS = 4


def file_sets(layout: paths.DatasetLayout, num_shards: int) -> dict[str, write.FileSet]:
    """Where the job's records go: one TFRecord file set per split, and the rejects."""
    sets = {
        split_name: write.FileSet(
            layout.shard_prefix(split_name),
            ".tfrecord",
            write.TFRECORD,
            num_shards,
            MIN_AUTO_SHARDS,
        )
        for split_name in paths.SPLITS
    }
    sets[REJECTS] = write.FileSet(layout.rejects_prefix, ".tsv", write.TEXT)
    return sets


def _temp_dir(layout: paths.DatasetLayout) -> str:
    """Where records wait for their shard; removed before the metadata is written."""
    return os.path.join(layout.root, TEMP_DIR)


def _format_reject(reject: records.Reject) -> tuple[str, bytes]:
    return REJECTS, records.format_reject(reject).encode("utf-8")


def _reason(reject: records.Reject) -> str:
    return reject.reason


def _is_train(split_and_pair) -> bool:
    return split_and_pair[0] == split.TRAIN


def _pair(tokenized: records.TokenizedPair) -> records.Pair:
    return tokenized.pair


def build(
    pipeline: beam.Pipeline,
    config: PreprocessConfig,
    layout: paths.DatasetLayout,
    settings: dict,
    start_time: float,
) -> beam.PCollection:
    """Adds the whole job to `pipeline`; returns the PCollection of the metadata dict.

    Args:
      pipeline: The pipeline to build into (any runner).
      config: What to do.
      layout: Where to write.
      settings: 'beam_options' and 'flags' recorded in metadata.json.
      start_time: `time.time()` when the job started, for 'elapsed_seconds'.
    """
    lines, read_counts = pipeline | "ReadInputs" >> io.ReadInputs(
        list(config.inputs), config.input_range_bytes, config.progress_seconds
    )
    pairs, malformed = lines | "CleanPairs" >> clean.CleanPairs(
        config.max_chars, config.reverse, read_counts, config.progress_seconds
    )
    unique, duplicates = pairs | "DropDuplicates" >> clean.DropDuplicates(config.progress_seconds)
    split_pairs = unique | "AssignSplits" >> split.AssignSplits(
        config.dev_fraction, config.test_fraction
    )
    vocabularies = (
        split_pairs
        | "TrainOnly" >> beam.Filter(_is_train)
        | "TrainPairs" >> beam.Values()
        | "LearnVocabularies" >> vocabulary.LearnVocabularies(config.vocab)
    )
    vocabulary_info = vocabularies | "WriteVocabularies" >> vocabulary.WriteVocabularies(layout)
    tokenized = split_pairs | "TokenizePairs" >> encode.TokenizePairs(
        vocabularies, config.progress_seconds
    )
    kept, length_rejects = tokenized | "FilterLengths" >> encode.FilterLengths(
        config.max_length, config.max_length_ratio
    )
    examples = kept | "EncodeExamples" >> encode.EncodeExamples()
    rejects = (malformed, duplicates, length_rejects) | "AllRejects" >> beam.Flatten()
    formatted_rejects = rejects | "FormatRejects" >> beam.Map(_format_reject)
    sets = file_sets(layout, config.num_shards)
    record_parts = (examples, formatted_rejects)
    files = record_parts | "WriteFiles" >> write.WriteFileSets(sets, _temp_dir(layout))
    accounts = (
        read_counts | "SumRead" >> accounting.SumReadCounts(),
        kept
        | "KeptPairs" >> beam.Map(_pair)
        | "WrittenByInput" >> accounting.CountByInput(accounting.WRITTEN),
        rejects | "RejectedByInput" >> accounting.CountByInput(accounting.REJECTED),
    ) | "Accounts" >> beam.Flatten()

    results = {
        "accounts": accounts,
        "sent_to_files": record_parts | "CountSent" >> accounting.CountPerName(),
        "in_files": files | "CountInFiles" >> accounting.CountRecordsInFiles(sets),
        "input_fingerprint": lines
        | "FingerprintInput" >> beam.CombineGlobally(summary.InputFingerprint()),
        "written": examples
        | "SplitNames" >> beam.Keys()
        | "CountWritten" >> beam.combiners.Count.PerElement(),
        "rejected": rejects
        | "Reasons" >> beam.Map(_reason)
        | "CountRejected" >> beam.combiners.Count.PerElement(),
        "vocabularies": vocabulary_info,
        "pieces_per_sentence": tokenized | "PiecesPerSentence" >> summary.PiecesPerSentence(),
        "histogram": kept | "LengthHistogram" >> summary.LengthHistogram(),
        "files": files,
    }
    settings = {
        **settings,
        "shared_vocab": config.vocab.shared,
        "max_length": config.max_length,
        "input_paths": [path for spec in config.inputs for path in io.describe(spec)],
    }
    return pipeline | "WriteMetadata" >> summary.WriteMetadata(
        layout, settings, start_time, results
    )
