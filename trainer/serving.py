"""Load an exported SavedModel and translate with it: shared by nmt-translate and nmt-evaluate.

Imports only TensorFlow and TF Text (whose ops the graph uses), never the model code, so it shows
what any serving system needs to run an export.
"""

import json
import os
import time

import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the tokenizer ops the SavedModel uses)
from absl import logging

# Must match pipeline.features.SCHEMA_VERSION and trainer/export.py's EXPORT_INFO; kept literal
# so serving code stays independent of the training code.
SCHEMA_VERSION = 1
EXPORT_INFO = "export_info.json"
SIGNATURE = "serving_default"


class TranslationError(RuntimeError):
    """The model or the input cannot be used; the message says why."""


def load_translator(model_dir: str):
    """Loads the serving signature after checking the export's schema version."""
    if not tf.io.gfile.exists(os.path.join(model_dir, "saved_model.pb")):
        raise TranslationError(f"{model_dir} is not an exported model (no saved_model.pb).")
    info_path = os.path.join(model_dir, EXPORT_INFO)
    if tf.io.gfile.exists(info_path):
        with tf.io.gfile.GFile(info_path) as f:
            version = json.load(f).get("schema_version")
        if version != SCHEMA_VERSION:
            raise TranslationError(
                f"{model_dir} was exported with schema version {version}; this tool reads "
                f"{SCHEMA_VERSION}. Re-export the model with this version."
            )
    return tf.saved_model.load(model_dir).signatures[SIGNATURE]


def translate(signature, sentences: list[str], batch_size: int = 32, n_best: int = 1):
    """Yields (n-best list, best score) per sentence, in order, logging progress on long inputs."""
    done, started = 0, time.time()
    for start in range(0, len(sentences), batch_size):
        batch = sentences[start : start + batch_size]
        out = signature(sources=tf.constant(batch))
        nbest = [[s.decode("utf-8") for s in row[:n_best]] for row in out["nbest"].numpy()]
        yield from zip(nbest, out["scores"].numpy().tolist(), strict=True)
        done += len(batch)
        if len(sentences) > batch_size:
            logging.info(
                "%d/%d sentences, %.1f sentences/s",
                done,
                len(sentences),
                done / (time.time() - started),
            )
