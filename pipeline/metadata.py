"""metadata.json: what the Beam job wrote, and the trainer's check that it fits the config."""

import json

import tensorflow as tf

from pipeline import features, paths
from pipeline import vocab as vocab_lib


class DatasetError(ValueError):
    """A dataset is missing, incomplete or incompatible with the run; the message says how."""


def write_metadata(layout: paths.DatasetLayout, metadata: dict) -> None:
    with tf.io.gfile.GFile(layout.metadata, "w") as f:
        json.dump(metadata, f, indent=2, sort_keys=True)


def read_metadata(layout: paths.DatasetLayout) -> dict:
    """Reads metadata.json of a finished dataset; refuses one without its COMPLETED marker."""
    if not tf.io.gfile.exists(layout.metadata):
        raise DatasetError(
            f"{layout.metadata} not found: is {layout.root!r} the output of the preprocess job?"
        )
    if not tf.io.gfile.exists(layout.completed):
        raise DatasetError(
            f"{layout.root} has no {paths.COMPLETED} marker: the preprocess job did not finish. "
            "Rerun it."
        )
    with tf.io.gfile.GFile(layout.metadata) as f:
        return json.load(f)


def check_compatible(metadata: dict, layout: paths.DatasetLayout) -> None:
    """Refuses a dataset of another schema, or whose vocabulary files are unreadable, of an older
    version or changed after it was made."""
    version = metadata.get("schema_version")
    if version != features.SCHEMA_VERSION:
        raise DatasetError(
            f"{layout.metadata}: schema_version {version} but this trainer reads version "
            f"{features.SCHEMA_VERSION}. Rerun the preprocess job with this version."
        )
    for side in ("source", "target"):
        try:
            vocabulary = vocab_lib.load_vocabulary(layout.vocabulary(side))
        except vocab_lib.VocabularyError as e:
            raise DatasetError(str(e)) from e
        expected = metadata["vocab"][side]["fingerprint"]
        actual = vocab_lib.fingerprint(vocabulary)
        if actual != expected:
            raise DatasetError(
                f"{layout.vocabulary(side)} has fingerprint {actual} but {layout.metadata} "
                f"records {expected}: the vocabulary changed after preprocessing."
            )
