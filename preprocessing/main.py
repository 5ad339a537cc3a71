"""nmt-preprocess: raw parallel text -> sharded TFRecords, vocabularies and metadata.json.

Every flag of the job is defined here; every other argument goes to Beam's PipelineOptions
unchanged, so the same command runs on any runner, e.g.

    nmt-preprocess --input=data/en-de.libreoffice-help.tsv.gz --output_dir=/tmp/en-de \
        --direct_running_mode=multi_processing --direct_num_workers=2
    nmt-preprocess --input=gs://bucket/corpus/*.tsv.gz --output_dir=gs://bucket/en-de \
        --runner=DataflowRunner --project=P --region=R --temp_location=gs://bucket/tmp \
        --setup_file=./setup.py

The default runner is the DirectRunner.
"""

import argparse
import json
import logging
import time

from pipeline import console

console.start_if_program("nmt-preprocess", __name__)  # before Beam and TensorFlow are imported

import apache_beam as beam  # noqa: E402
from apache_beam.options import pipeline_options  # noqa: E402

from pipeline import metadata as metadata_lib  # noqa: E402
from pipeline import paths, redact  # noqa: E402
from preprocessing import (  # noqa: E402
    direct_runner,
    dry_run,
    io,
    output_dir,
    pipeline_def,
    progress,
    vocabulary,
)

_DEFAULTS = pipeline_def.PreprocessConfig(inputs=())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nmt-preprocess",
        description=__doc__.split("\n", 1)[0],
        epilog="Every other --option is passed to Beam's PipelineOptions (--runner, "
        "--direct_running_mode, --direct_num_workers, --project, --setup_file, ...).",
        # No prefix matching: an abbreviation must never swallow a Beam option.
        allow_abbrev=False,
    )
    add = parser.add_argument
    add(
        "--input",
        action="append",
        help="TSV path or glob (source<TAB>target, .gz ok), or "
        "tfds:NAME[/CONFIG][:VERSION]; repeat or separate with commas.",
    )
    add("--source_input", action="append", help="Source side of line-aligned files; repeatable.")
    add("--target_input", action="append", help="Target side, one per --source_input, in order.")
    add("--tfds_data_dir", default=None, help="Where tfds: inputs are prepared (TFDS default).")
    add(
        "--tfds_splits",
        default=io.DEFAULT_TFDS_SPLITS,
        help="What each split of a tfds: input becomes: TFDS_SPLIT:SPLIT,... with SPLIT one of "
        "train, dev, test, hash (split by --dev/test_fraction) or skip.",
    )
    add("--reverse", action="store_true", help="Swap source and target of every input.")
    add("--output_dir", required=True, help="Dataset directory (local path or gs://...).")
    add("--overwrite", action="store_true", help="Replace an existing output directory.")
    add("--vocab_size", type=int, default=_DEFAULTS.vocab.size, help="Largest vocabulary size.")
    add("--shared_vocab", action="store_true", help="One vocabulary for source and target.")
    add(
        "--vocab_max_words",
        type=int,
        default=_DEFAULTS.vocab.max_words,
        help="Most frequent distinct words of the training split the SentencePiece learner "
        "sees; bounds its time and memory.",
    )
    add(
        "--vocab_character_coverage",
        type=float,
        default=_DEFAULTS.vocab.character_coverage,
        help="Share of characters given pieces (e.g. 0.9995 for Chinese or Japanese).",
    )
    add(
        "--vocab_model_type",
        choices=vocabulary.MODEL_TYPES,
        default=_DEFAULTS.vocab.model_type,
        help="SentencePiece model learned: bpe (seconds) or unigram (slower to learn).",
    )
    add(
        "--max_length",
        type=int,
        default=_DEFAULTS.max_length,
        help="Longest side in subword pieces (BOS/EOS excluded).",
    )
    add(
        "--max_chars",
        type=int,
        default=_DEFAULTS.max_chars,
        help="Longest raw side in characters (0: no limit).",
    )
    add(
        "--max_length_ratio",
        type=float,
        default=_DEFAULTS.max_length_ratio,
        help="Largest longer/shorter length ratio in pieces (0: no limit).",
    )
    add(
        "--dev_fraction",
        type=float,
        default=_DEFAULTS.dev_fraction,
        help="Share of inputs without their own splits put in dev.",
    )
    add(
        "--test_fraction",
        type=float,
        default=_DEFAULTS.test_fraction,
        help="Share of inputs without their own splits put in test.",
    )
    add("--num_shards", type=int, default=0, help="TFRecord shards per split (0: automatic).")
    add("--log_dir", help=f"Directory of the full log (default: {console.CACHE_LOG_DIR}).")
    add("--verbosity", type=int, default=0, help="1: print every library's log lines too.")
    add(
        "--input_range_mb",
        type=float,
        default=_DEFAULTS.input_range_bytes / 2**20,
        help="Uncompressed text inputs larger than this are read in ranges of this many MiB by "
        "parallel workers (compressed files are read whole).",
    )
    add(
        "--progress_seconds",
        type=float,
        default=_DEFAULTS.progress_seconds,
        help="Least seconds between two progress lines (console, and each worker's log).",
    )
    add(
        "--dry_run",
        action="store_true",
        help="Translate the pipeline for the chosen runner and print it; run nothing.",
    )
    return parser


def _config(args: argparse.Namespace) -> pipeline_def.PreprocessConfig:
    inputs = io.parse_inputs(
        args.input, args.source_input, args.target_input, args.tfds_data_dir, args.tfds_splits
    )
    return pipeline_def.PreprocessConfig(
        inputs=tuple(inputs),
        reverse=args.reverse,
        max_chars=args.max_chars,
        max_length=args.max_length,
        max_length_ratio=args.max_length_ratio,
        dev_fraction=args.dev_fraction,
        test_fraction=args.test_fraction,
        num_shards=args.num_shards,
        input_range_bytes=round(args.input_range_mb * 2**20),
        progress_seconds=args.progress_seconds,
        vocab=vocabulary.VocabParams(
            size=args.vocab_size,
            shared=args.shared_vocab,
            max_words=args.vocab_max_words,
            character_coverage=args.vocab_character_coverage,
            model_type=args.vocab_model_type,
        ),
    )


def _check_reachable(config: pipeline_def.PreprocessConfig, output: str, runner: str) -> None:
    """Refuses local paths for Dataflow, whose workers cannot see this machine's disk.

    Raises:
      ValueError: naming the local paths.
    """
    if not runner.endswith("DataflowRunner"):
        return
    used = [output]
    for spec in config.inputs:
        tfds_dir = isinstance(spec, io.TfdsInput) and (spec.data_dir or "~/tensorflow_datasets")
        used += [tfds_dir] if tfds_dir else io.describe(spec)
    local = [path for path in used if output_dir.is_local(path)]
    if local:
        raise ValueError(
            f"{runner} workers cannot read or write this machine's files: {', '.join(local)}. "
            "Use Cloud Storage paths (gs://...)."
        )


def _json_safe(values: dict) -> dict:
    return json.loads(json.dumps(values, default=str))


def _recorded_options(options: pipeline_options.PipelineOptions) -> dict:
    """The Beam options the user set, as metadata.json records them, credentials masked."""
    recorded = _json_safe(options.get_all_options(drop_default=True))
    return {
        name: redact.REDACTED if isinstance(value, str) and redact.is_secret(name) else value
        for name, value in recorded.items()
    }


def _vocab_summary(side: str, info: dict, learn_seconds: float) -> str:
    return (
        f"{side} {info['size']} (learned in {learn_seconds:.1f} s from "
        f"{info['words_learned_from']} of {info['distinct_words']} words, "
        f"{info['pieces_per_sentence']:.2f} pieces/sentence)"
    )


def _summary(metadata: dict, elapsed: float, where: str) -> str:
    counts = metadata["counts"]
    written = counts["written"]
    rejected = {reason: n for reason, n in counts["rejected"].items() if n}
    vocab = metadata["vocab"]
    rows = [
        f"Preprocessing finished in {elapsed:.1f} s: {where}",
        f"  read      {counts['read']}",
        "  written   " + ", ".join(f"{split} {written[split]}" for split in paths.SPLITS),
        f"  rejected  {sum(rejected.values())}"
        + "".join(f", {reason} {n}" for reason, n in sorted(rejected.items())),
        "  vocab     "
        + ("shared, " if vocab["shared"] else "")
        + "\n            ".join(
            _vocab_summary(side, vocab[side], metadata["vocab_learn_seconds"][side])
            for side in vocabulary.SIDES
        ),
        "  shards    " + ", ".join(f"{s} {n}" for s, n in metadata["num_shards"].items()),
    ]
    return "\n".join(rows)


def run(argv: list[str] | None = None) -> None:
    """Runs the job (or the dry run) with `argv` (default: the command line)."""
    logging.getLogger().setLevel(logging.INFO)
    # Beam narrates every worker handshake and stage at INFO; keep its warnings and errors.
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    parser = _parser()
    args, beam_args = parser.parse_known_args(argv)
    options = pipeline_options.PipelineOptions(beam_args)
    standard = options.view_as(pipeline_options.StandardOptions)
    standard.runner = standard.runner or "DirectRunner"
    try:
        config = _config(args)
        _check_reachable(config, args.output_dir, standard.runner)
        io.check_local_inputs(list(config.inputs))
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    settings = {
        "beam_options": _recorded_options(options),
        "flags": _json_safe(vars(args)),
    }

    if args.dry_run:
        pipeline = beam.Pipeline(options=options)
        pipeline_def.build(
            pipeline, config, paths.DatasetLayout(args.output_dir), settings, time.time()
        )
        # The dry run's product is this text on stdout, for a person or a CI log to read.
        print(dry_run.describe(dry_run.translate(pipeline, options), standard.runner))
        return

    try:
        staging = output_dir.prepare(args.output_dir, args.overwrite)
    except output_dir.OutputExistsError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    start = time.time()
    logging.info(
        "Preprocessing %s into %s with the %s.",
        ", ".join(path for spec in config.inputs for path in io.describe(spec)),
        staging,
        standard.runner,
    )
    direct_runner.avoid_lossy_flush_race()
    direct_runner.return_freed_memory()
    direct_runner.hand_over_shuffles_once()
    try:
        with progress.Reporter(config.progress_seconds), beam.Pipeline(options=options) as pipeline:
            pipeline_def.build(pipeline, config, paths.DatasetLayout(staging), settings, start)
    except BaseException:
        output_dir.abandon(staging, args.output_dir)
        raise
    output_dir.commit(staging, args.output_dir)
    metadata = metadata_lib.read_metadata(paths.DatasetLayout(args.output_dir))
    logging.info("%s", _summary(metadata, time.time() - start, args.output_dir))


if __name__ == "__main__":
    run()
