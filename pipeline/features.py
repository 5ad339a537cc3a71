"""The one feature spec: Beam writes with it, tf.data parses with it, export serves beside it.

A record holds one sentence pair as subword ids (no BOS/EOS: the trainer adds them) and the
normalised raw text of both sides (references for BLEU, sources for translation samples).
"""

import tensorflow as tf

# Bumped whenever the meaning or layout of a record changes; the trainer refuses other versions.
SCHEMA_VERSION = 1

SOURCE_IDS = "source_ids"
TARGET_IDS = "target_ids"
SOURCE_TEXT = "source_text"
TARGET_TEXT = "target_text"

FEATURE_SPEC = {
    SOURCE_IDS: tf.io.RaggedFeature(tf.int64),
    TARGET_IDS: tf.io.RaggedFeature(tf.int64),
    SOURCE_TEXT: tf.io.FixedLenFeature([], tf.string),
    TARGET_TEXT: tf.io.FixedLenFeature([], tf.string),
}


def _int64_feature(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def _bytes_feature(value: str):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode("utf-8")]))


def encode_example(
    source_ids: list[int], target_ids: list[int], source_text: str, target_text: str
) -> bytes:
    """Serialises one pair as a `tf.train.Example` that `parse_example` reads back."""
    example = tf.train.Example(
        features=tf.train.Features(
            feature={
                SOURCE_IDS: _int64_feature(source_ids),
                TARGET_IDS: _int64_feature(target_ids),
                SOURCE_TEXT: _bytes_feature(source_text),
                TARGET_TEXT: _bytes_feature(target_text),
            }
        )
    )
    return example.SerializeToString()


def parse_examples(serialized: tf.Tensor, with_text: bool = True) -> dict[str, tf.Tensor]:
    """Parses [N] serialised records: ids as [N, None] int32 RaggedTensors, text as [N] strings.

    Without `with_text` only the ids are read (training input never looks at the text).
    """
    spec = FEATURE_SPEC if with_text else {k: FEATURE_SPEC[k] for k in (SOURCE_IDS, TARGET_IDS)}
    parsed = tf.io.parse_example(serialized, spec)
    for key in (SOURCE_IDS, TARGET_IDS):
        parsed[key] = tf.cast(parsed[key], tf.int32)
    return parsed


def parse_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Parses one serialised record into dense int32 id vectors and string scalars."""
    parsed = parse_examples(serialized[None])
    return {key: value[0] for key, value in parsed.items()}
