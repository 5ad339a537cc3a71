"""The whole job through its entry point: nothing lost, every reason named, output as contracted."""

import glob
import logging
import os
import re
import shutil

import apache_beam as beam
import pytest
import tensorflow as tf

from pipeline import features, paths, text
from pipeline import metadata as metadata_lib
from pipeline import vocab as vocab_lib
from preprocessing import main, pipeline_def, progress, records, write
from preprocessing import split as split_lib
from tests.preprocessing import conftest, test_progress

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _argv(corpus, output_dir, *extra):
    return [
        f"--input={corpus['tsv']}",
        f"--source_input={corpus['source']}",
        f"--target_input={corpus['target']}",
        f"--output_dir={output_dir}",
        *conftest.FLAGS,
        *extra,
    ]


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture(scope="module")
def dirty_run_with_lines(dirty_corpus, tmp_path_factory):
    """The dirty corpus preprocessed once with the default (in-process) DirectRunner, every
    progress line let through (0 s between them); also returns the progress lines."""
    output_dir = str(tmp_path_factory.mktemp("dirty_run") / "dataset")
    lines = _Lines()
    logging.getLogger(progress.__name__).addHandler(lines)
    try:
        main.run(_argv(dirty_corpus, output_dir, "--progress_seconds=0"))
    finally:
        logging.getLogger(progress.__name__).removeHandler(lines)
    layout = paths.DatasetLayout(output_dir)
    return layout, metadata_lib.read_metadata(layout), [r.getMessage() for r in lines.records]


@pytest.fixture(scope="module")
def dirty_run(dirty_run_with_lines):
    layout, metadata, _ = dirty_run_with_lines
    return layout, metadata


def _rejects(layout):
    rejects = {}
    for path in glob.glob(layout.rejects_pattern):
        with open(path, encoding="utf-8") as f:
            for line in f:
                reason, origin, _ = line.rstrip("\n").split("\t")
                rejects[origin] = reason
    return rejects


def _examples(layout, split):
    files = sorted(glob.glob(layout.shard_pattern(split)))
    return [features.parse_example(r) for r in tf.data.TFRecordDataset(files)]


def test_nothing_is_lost_and_every_reject_has_its_reason_and_origin(dirty_run, dirty_corpus):
    layout, metadata = dirty_run
    counts = metadata["counts"]
    assert counts["read"] == dirty_corpus["lines"]
    assert counts["read"] == sum(counts["written"].values()) + sum(counts["rejected"].values())
    assert _rejects(layout) == dirty_corpus["expected"]
    assert all(counts["rejected"][reason] for reason in records.REJECT_REASONS)
    assert all(counts["written"][split] for split in paths.SPLITS)
    by_input = counts["by_input"]
    assert sorted(by_input) == sorted([dirty_corpus["tsv"], dirty_corpus["source"]])
    assert by_input[dirty_corpus["source"]]["read"] == 12  # 10 pairs, 2 unpaired lines.
    for source, entry in by_input.items():
        assert entry["read"] == entry["written"] + entry["rejected"], source


def test_progress_lines_name_each_stage_once_start_then_end_in_order(
    dirty_run_with_lines, dirty_corpus
):
    *_, messages = dirty_run_with_lines
    messages = [m for m in messages if " running for " not in m]
    assert len(messages) == len(set(messages)), "every line once"
    stages = [match.groups() for match in map(test_progress.STAGE.match, messages) if match]
    count = int(stages[0][1])
    assert count > 20  # The job's fused stages, each started then done, one after another:
    assert [(int(number), kind) for number, _, _, kind in stages] == [
        (number, kind) for number in range(1, count + 1) for kind in ("started at", "done in")
    ]
    steps = [steps for _, _, steps, _ in stages]
    assert "WriteMetadata" in steps[-1]
    for step in ("ReadInputs", "CleanPairs", "LearnVocabularies", "TokenizePairs", "WriteFiles"):
        assert any(step in stage for stage in steps), step
    # The gzip input is read whole, and counted once read; the aligned files as they are read.
    reads = [m for m in messages if m.startswith("Reading ")]
    aligned = f"{dirty_corpus['source']} + {dirty_corpus['target']}"
    for name in (dirty_corpus["tsv"], aligned):
        lines = [m for m in reads if m.startswith(f"Reading {name}: ")]
        assert lines and "(100%)" in lines[-1], name
    # Cleaning, deduplication and tokenization count their work against what came in.
    for work in (
        "Cleaning input lines",
        "Deduplicating sentence pairs",
        "Tokenizing sentence pairs",
    ):
        counted = [m for m in messages if m.startswith(f"{work}: ")]
        assert counted and "(100%)" in counted[-1], work


def test_output_layout_and_metadata_follow_the_contract(dirty_run):
    layout, metadata = dirty_run
    metadata_lib.check_compatible(metadata, layout)
    for split in paths.SPLITS:
        shards = glob.glob(layout.shard_pattern(split))
        assert len(shards) == metadata["num_shards"][split] == 4
        assert len(_examples(layout, split)) == metadata["counts"]["written"][split]
    histogram = metadata["length_histograms"]["source"]
    assert sum(histogram.values()) == sum(metadata["counts"]["written"].values())
    assert max(int(length) for length in histogram) <= metadata["max_length"] == 24
    assert metadata["vocab"]["shared"] is False
    for side in ("source", "target"):
        info = metadata["vocab"][side]
        assert 0 <= metadata["vocab_learn_seconds"][side] < metadata["elapsed_seconds"]
        assert 0 < info["words_learned_from"] == info["distinct_words"]
        # Every tokenized pair counts, the too_long ones too, so the mean exceeds the kept ones'.
        kept = metadata["length_histograms"][side]
        kept_mean = sum(int(n) * c for n, c in kept.items()) / sum(kept.values())
        assert info["pieces_per_sentence"] > kept_mean
    summary = main._summary(metadata, 1.0, layout.root)
    assert f"source {metadata['vocab']['source']['size']} (learned in " in summary
    assert "pieces/sentence" in summary and "too_long 1" in summary
    assert metadata["beam_options"]["runner"] == "DirectRunner"
    assert metadata["input"]["fingerprint"].startswith("sha256-multiset:")
    parent = os.path.dirname(layout.root)
    assert os.listdir(parent) == ["dataset"]  # No staging directory left behind.


def test_records_hold_ids_without_specials_that_detokenize_to_their_text(dirty_run):
    layout, _ = dirty_run
    tokenizers = {
        side: text.SubwordTokenizer(vocab_lib.load_vocabulary(layout.vocabulary(side)))
        for side in ("source", "target")
    }
    examples = _examples(layout, "train")
    for side, ids_key, text_key in (
        ("source", features.SOURCE_IDS, features.SOURCE_TEXT),
        ("target", features.TARGET_IDS, features.TARGET_TEXT),
    ):
        ids = tf.ragged.constant([e[ids_key].numpy().tolist() for e in examples], tf.int32)
        specials = {vocab_lib.PAD_ID, vocab_lib.BOS_ID, vocab_lib.EOS_ID}
        assert not specials & set(ids.flat_values.numpy().tolist())
        decoded = tokenizers[side].detokenize(ids).numpy().tolist()
        assert decoded == [e[text_key].numpy() for e in examples]
    assert "Caf\u00e9 open." in {e[features.SOURCE_TEXT].numpy().decode() for e in examples} | {
        e[features.SOURCE_TEXT].numpy().decode()
        for split in ("dev", "test")
        for e in _examples(layout, split)
    }


def test_vocabulary_is_learned_from_the_training_split_only(dirty_run):
    layout, _ = dirty_run
    held_out = {source for source, _ in conftest.leak_probe_pairs()}
    written = {
        e[features.SOURCE_TEXT].numpy().decode()
        for split in ("dev", "test")
        for e in _examples(layout, split)
    }
    assert held_out <= written
    source_vocab = vocab_lib.load_vocabulary(layout.vocabulary("source"))
    assert not [piece for piece in source_vocab.pieces if "\u00f8" in piece]


def test_rerun_refuses_then_overwrite_replaces(dirty_run, dirty_corpus, tmp_path, capsys):
    layout, metadata = dirty_run
    output_dir = str(tmp_path / "copy")
    shutil.copytree(layout.root, output_dir)
    with pytest.raises(SystemExit) as exit_info:
        main.run(_argv(dirty_corpus, output_dir))
    assert exit_info.value.code == 2
    assert "already holds a complete dataset" in capsys.readouterr().err
    secret = "--s3_secret_access_key=hunter2"
    main.run(_argv(dirty_corpus, output_dir, "--overwrite", "--shared_vocab", secret))
    rerun = metadata_lib.read_metadata(paths.DatasetLayout(output_dir))
    assert rerun["beam_options"]["s3_secret_access_key"] == "REDACTED"
    assert rerun["vocab"]["shared"] is True
    assert rerun["vocab"]["source"]["fingerprint"] == rerun["vocab"]["target"]["fingerprint"]
    assert rerun["counts"]["read"] == metadata["counts"]["read"]
    assert sorted(os.listdir(tmp_path)) == ["copy"]


def test_failed_run_leaves_no_partial_output(tmp_path):
    corpus = tmp_path / "bad.tsv"
    corpus.write_text("no tab here\nnor here\n")
    output_dir = tmp_path / "out"
    with pytest.raises(Exception, match="training split is empty"):
        main.run([f"--input={corpus}", f"--output_dir={output_dir}"])
    assert sorted(os.listdir(tmp_path)) == ["bad.tsv"]


def _train_example_text():
    """The source of a dirty-corpus pair that lands in train, to find its example by."""
    return next(
        source
        for source, _ in conftest.clean_pairs(30)[6:]
        if split_lib.assign_split(source, 0.2, 0.2) == split_lib.TRAIN
    )


class _SinkThatDropsOneRecord(write.WriteFileSets):
    """A broken sink (test double): loses the train example holding `_train_example_text()`."""

    def expand(self, record_parts):
        probe = _train_example_text().encode()
        kept = (
            record_parts
            | "Together" >> beam.Flatten()
            | "DropOne" >> beam.Filter(lambda record: probe not in record[1])
        )
        return super().expand(kept)


def test_a_sink_that_loses_a_record_fails_the_job_without_completed(
    dirty_corpus, tmp_path, monkeypatch
):
    monkeypatch.setattr(pipeline_def.write, "WriteFileSets", _SinkThatDropsOneRecord)
    output_dir = tmp_path / "out"
    with pytest.raises(Exception, match="Records were lost") as failure:
        main.run(_argv(dirty_corpus, str(output_dir)))
    sent, found = re.search(
        r"train: (\d+) records sent to the files, (\d+) in them", str(failure.value)
    ).groups()
    assert int(found) == int(sent) - 1
    assert not glob.glob(str(tmp_path / "**" / paths.COMPLETED), recursive=True)
    assert os.listdir(tmp_path) == []  # Neither the output nor its staging directory.


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--input=x.tsv", "--runner=DataflowRunner"], "workers cannot read or write"),
        (["--source_input=a.en"], "--source_input has 1 file"),
        (["--input=/nonexistent/*.tsv"], "matches no file"),
        (["--input=x.tsv", "--dev_fraction=0.6", "--test_fraction=0.5"], "leaves nothing"),
        (["--input=x.tsv", "--progress_seconds=-1"], "--progress_seconds must not be negative"),
    ],
)
def test_bad_flags_exit_with_a_message(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main.run([*argv, f"--output_dir={tmp_path / 'out'}"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_tfds_input_keeps_its_own_splits_and_no_test_pair_in_train(tfds_data_dir, tmp_path):
    output_dir = str(tmp_path / "out")
    main.run(
        [
            f"--input=tfds:{conftest.TFDS_NAME}",
            f"--tfds_data_dir={tfds_data_dir}",
            f"--output_dir={output_dir}",
            *conftest.FLAGS,
        ]
    )
    layout = paths.DatasetLayout(output_dir)
    metadata = metadata_lib.read_metadata(layout)
    pairs = conftest.tfds_split_pairs()
    assert metadata["counts"]["read"] == sum(map(len, pairs.values())) == 48
    assert metadata["input"]["paths"] == [f"tfds:{conftest.TFDS_NAME}"]
    written = {
        split: {e[features.SOURCE_TEXT].numpy().decode() for e in _examples(layout, split)}
        for split in paths.SPLITS
    }
    repeated = {pairs["test"][0][0], pairs["validation"][0][0]}
    expected = {"train": "train", "dev": "validation", "test": "test"}
    for split, tfds_split in expected.items():
        sources = {source for source, _ in pairs[tfds_split]}
        assert written[split] == sources - (repeated if split == "train" else set())
    assert not written["train"] & (written["dev"] | written["test"])
    # The training copies of the pairs dev and test repeat are the ones rejected.
    rejects = _rejects(layout)
    assert set(rejects.values()) == {records.DUPLICATE} and len(rejects) == 2
    assert all(origin.startswith(f"tfds:{conftest.TFDS_NAME}:train[0shard]:") for origin in rejects)


def test_dry_run_translates_for_dataflow_and_ships_the_package(tmp_path, capsys):
    # A copy of the distribution, so building its sdist leaves no files in the checkout.
    package = tmp_path / "src"
    package.mkdir()
    shutil.copy(os.path.join(REPO, "setup.py"), package)
    for name in ("pipeline", "preprocessing"):
        shutil.copytree(os.path.join(REPO, name), package / name)
    main.run(
        [
            "--input=gs://example-bucket/corpus/*.tsv.gz",
            "--output_dir=gs://example-bucket/datasets/en-de",
            "--dry_run",
            "--runner=DataflowRunner",
            "--project=example-project",
            "--region=europe-west4",
            "--temp_location=gs://example-bucket/tmp",
            f"--setup_file={package / 'setup.py'}",
        ]
    )
    out = capsys.readouterr().out
    assert "Dry run for DataflowRunner" in out
    assert "beam:env:docker:v1 apache/beam_python3.11_sdk" in out
    assert "workflow.tar.gz" in out  # The sdist Dataflow workers install.
    for step in ("ReadInputs", "LearnVocabularies", "TokenizePairs", "WriteFiles", "WriteMetadata"):
        assert step in out


@pytest.mark.slow
def test_multi_processing_gives_the_same_dataset(dirty_run, dirty_corpus, tmp_path, caplog):
    """Every progress line on (0 s between them) changes nothing in the output, and a worker
    process' warning reaches this process' log once, as a plain line."""
    layout, metadata = dirty_run
    output_dir = str(tmp_path / "multi")
    caplog.set_level(logging.INFO)
    main.run(
        _argv(
            dirty_corpus,
            output_dir,
            "--direct_running_mode=multi_processing",
            "--direct_num_workers=2",
            "--progress_seconds=0",
        )
    )
    # Once: not also as Beam's "Worker: <LogEntry>" record, which holds the same text.
    mismatch = [r for r in caplog.records if "have different line counts" in r.getMessage()]
    assert [(r.name, r.levelname) for r in mismatch] == [(progress.__name__, "WARNING")]
    multi_layout = paths.DatasetLayout(output_dir)
    multi = metadata_lib.read_metadata(multi_layout)
    for key in ("counts", "vocab", "length_histograms", "input", "num_shards"):
        assert multi[key] == metadata[key], key
    assert multi["beam_options"]["direct_num_workers"] == 2
    for split in paths.SPLITS:
        for shard in range(4):
            name = f"{split}/{split}-{shard:05d}-of-00004.tfrecord"
            expected = list(tf.data.TFRecordDataset(os.path.join(layout.root, name)))
            actual = list(tf.data.TFRecordDataset(os.path.join(output_dir, name)))
            assert sorted(r.numpy() for r in actual) == sorted(r.numpy() for r in expected)


@pytest.mark.slow
def test_two_workers_reading_forced_ranges_account_for_every_line(tmp_path, caplog):
    """1,000 pairs with dirty lines, read in ~3 KB ranges by two worker processes: every line
    is in a shard (by its text) or in the rejects file (by its number), once."""
    lines = [f"{s}\t{t}".encode() for s, t in conftest.clean_pairs(1000)]
    for index, (raw, _) in enumerate(conftest.DIRTY_LINES):
        lines.insert(100 * index + 7, raw)
    corpus = tmp_path / "corpus.tsv"
    corpus.write_bytes(b"".join(line + b"\n" for line in lines))
    output_dir = str(tmp_path / "out")
    caplog.set_level(logging.INFO)
    main.run(
        [
            f"--input={corpus}",
            f"--output_dir={output_dir}",
            *conftest.FLAGS,
            "--input_range_mb=0.003",
            "--direct_running_mode=multi_processing",
            "--direct_num_workers=2",
            "--progress_seconds=0",
        ]
    )
    # The worker processes' read counts reach this process and add up to the whole file.
    reads = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Reading ")]
    assert reads and reads[-1].startswith(f"Reading {corpus}: ") and "(100%)" in reads[-1]
    # So do their counts of tokenized pairs, against the number of unique pairs.
    tokenized = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Tokenizing ")]
    assert tokenized and tokenized[-1].startswith("Tokenizing sentence pairs: ")
    assert "(100%)" in tokenized[-1]
    layout = paths.DatasetLayout(output_dir)
    metadata = metadata_lib.read_metadata(layout)
    assert metadata["counts"]["read"] == len(lines)
    rejects = _rejects(layout)
    for index, (_, reason) in enumerate(conftest.DIRTY_LINES):
        assert rejects[f"{corpus}:{100 * index + 8}"] == reason
    written = [
        e[features.SOURCE_TEXT].numpy().decode()
        for split in paths.SPLITS
        for e in _examples(layout, split)
    ]
    assert len(written) == len(set(written)) == len(lines) - len(rejects)
    written = set(written)
    for number, line in enumerate(lines, start=1):
        if f"{corpus}:{number}" not in rejects:
            assert text.normalize(line.split(b"\t")[0].decode()) in written, number
