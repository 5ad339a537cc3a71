"""A small real dataset in the Beam job's output layout, made without Beam.

Trainer and export tests use it to stay fast and independent of the preprocessing job; the
integration tests run the real Beam job instead. The pairs are the first lines of the bundled
corpus; the vocabularies are learned from them by the Beam job's own SentencePiece learner.
"""

import gzip
import os

import tensorflow as tf

from pipeline import features, paths, text
from pipeline import metadata as metadata_lib
from pipeline import vocab as vocab_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(REPO, "data", "en-de.libreoffice-help.tsv.gz")

# The session's shared training run (tests/conftest.py `trained_tiny_run`): long enough for two
# dev evaluations (the tiny config evaluates every 20 steps) and a falling loss, with scheduled
# sampling on.
TRAINED_RUN_STEPS = 40
TRAINED_RUN_OVERRIDES = f"train.train_steps={TRAINED_RUN_STEPS},train.sampling_probability=0.25"


def read_corpus(limit: int) -> list[tuple[str, str]]:
    pairs = []
    with gzip.open(CORPUS, "rt", encoding="utf-8") as f:
        for line in f:
            source, target = line.rstrip("\n").split("\t")
            source, target = text.normalize(source), text.normalize(target)
            if 0 < len(source.split()) <= 12 and 0 < len(target.split()) <= 12:
                pairs.append((source, target))
            if len(pairs) == limit:
                break
    return pairs


def _vocabulary(sentences: list[str], size: int) -> vocab_lib.Vocabulary:
    from preprocessing import vocabulary

    params = vocabulary.VocabParams(size=size)
    return vocabulary.learn_vocabulary(vocabulary.count_words(sentences), params)


def write_dataset(root: str, pairs: list[tuple[str, str]], size: int = 1000) -> paths.DatasetLayout:
    """Writes pairs (80/10/10 train/dev/test) with vocabularies, metadata and COMPLETED.

    Args:
      root: The dataset directory.
      pairs: Normalised (source, target) pairs.
      size: Largest vocabulary size per side (fewer pieces when the pairs have fewer). The
        default gives about one piece per word on short sentences, so no pair exceeds the tiny
        config's `data.max_length` and the tiny model learns within a few dozen steps.
    """
    layout = paths.DatasetLayout(root)
    tf.io.gfile.makedirs(os.path.join(root, "vocab"))
    vocabs = {
        "source": _vocabulary([s for s, _ in pairs], size),
        "target": _vocabulary([t for _, t in pairs], size),
    }
    for side, tokens in vocabs.items():
        vocab_lib.write_vocabulary(layout.vocabulary(side), tokens)
    tokenizers = {side: text.SubwordTokenizer(tokens) for side, tokens in vocabs.items()}
    source_ids = tokenizers["source"].tokenize(tf.constant([s for s, _ in pairs])).to_list()
    target_ids = tokenizers["target"].tokenize(tf.constant([t for _, t in pairs])).to_list()
    n = len(pairs)
    bounds = {
        "train": (0, n * 8 // 10),
        "dev": (n * 8 // 10, n * 9 // 10),
        "test": (n * 9 // 10, n),
    }
    for split, (lo, hi) in bounds.items():
        tf.io.gfile.makedirs(os.path.dirname(layout.shard_prefix(split)))
        with tf.io.TFRecordWriter(layout.shard_prefix(split) + "-00000-of-00001.tfrecord") as w:
            for i in range(lo, hi):
                w.write(features.encode_example(source_ids[i], target_ids[i], *pairs[i]))
    metadata_lib.write_metadata(
        layout,
        {
            "schema_version": features.SCHEMA_VERSION,
            "counts": {
                "read": n,
                "written": {s: hi - lo for s, (lo, hi) in bounds.items()},
                "rejected": {},
            },
            "vocab": {
                "shared": False,
                **{
                    side: {"size": len(t), "fingerprint": vocab_lib.fingerprint(t)}
                    for side, t in vocabs.items()
                },
            },
            "max_length": max(len(x) for x in source_ids + target_ids),
        },
    )
    with tf.io.gfile.GFile(layout.completed, "w") as f:
        f.write("")
    return layout


def tiny_trainer(data_dir: str, model_dir: str):
    """The model side of an untrained `attention_seq2seq/tiny` trainer on `data_dir` (its
    `state.TrainState`, which export, plots and averaging take), seeded for repeatability."""
    from pipeline import config as config_lib
    from trainer import state

    cfg = config_lib.get_experiment("attention_seq2seq/tiny")
    cfg = config_lib.validate(config_lib.merge(cfg, {"data": {"data_dir": data_dir}}, "test"))
    tf.keras.utils.set_random_seed(0)
    return state.TrainState(cfg, model_dir, tf.distribute.get_strategy())


def read_history(model_dir: str, name: str = "train_history.jsonl") -> list[dict]:
    """The JSON-lines history a run wrote so far ([] before the first record)."""
    import json

    path = os.path.join(model_dir, name)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def tiny_train_argv(data_dir: str, model_dir: str, overrides: str, *flags: str) -> list[str]:
    """The command line of `nmt-train` on the tiny config, for a child process."""
    import sys

    return [
        sys.executable,
        "-m",
        "trainer.main",
        "--experiment=attention_seq2seq/tiny",
        f"--data_dir={data_dir}",
        f"--model_dir={model_dir}",
        f"--params_override={overrides}",
        *flags,
    ]


def train_tiny(
    data_dir: str, model_dir: str, overrides: str, *flags: str, env: dict | None = None
) -> str:
    """Runs `nmt-train` on the tiny config in a child process; returns its console (stderr)."""
    import subprocess

    argv = tiny_train_argv(data_dir, model_dir, overrides, *flags)
    result = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stderr
