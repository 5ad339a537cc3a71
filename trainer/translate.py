"""`nmt-translate`: translate sentences with an exported SavedModel.

Loads the model with plain TensorFlow (plus TF Text's ops); nothing else from this project is
imported, so the same code works wherever the SavedModel is copied.
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
import tensorflow_text  # noqa: E402,F401  (registers the tokenizer ops the SavedModel uses)
from absl import app, flags, logging  # noqa: E402

# Must match trainer/export.py; kept literal so this tool runs without the project installed.
SCHEMA_VERSION = 1
EXPORT_INFO = "export_info.json"

_MODEL = flags.DEFINE_string("model", None, "Exported SavedModel directory.")
_INPUT = flags.DEFINE_string("input", None, "File of source sentences, one per line ('-': stdin).")
_OUTPUT = flags.DEFINE_string("output", None, "Write translations here instead of stdout.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Sentences per call.", lower_bound=1)
_NBEST = flags.DEFINE_integer(
    "n_best", 1, "Write the n best hypotheses per sentence, tab-separated."
)
flags.mark_flag_as_required("model")


class TranslationError(RuntimeError):
    """The model or the input cannot be used; the message says why."""


def load_translator(model_dir: str):
    """Loads the serving signature after checking the export's schema version."""
    info_path = os.path.join(model_dir, EXPORT_INFO)
    if not tf.io.gfile.exists(os.path.join(model_dir, "saved_model.pb")):
        raise TranslationError(f"{model_dir} is not an exported model (no saved_model.pb).")
    if tf.io.gfile.exists(info_path):
        with tf.io.gfile.GFile(info_path) as f:
            version = json.load(f).get("schema_version")
        if version != SCHEMA_VERSION:
            raise TranslationError(
                f"{model_dir} was exported with schema version {version}; this tool reads "
                f"{SCHEMA_VERSION}. Re-export the model with this version."
            )
    return tf.saved_model.load(model_dir).signatures["serving_default"]


def translate(signature, sentences: list[str], batch_size: int = 32, n_best: int = 1):
    """Yields (translation or n-best list, score) per sentence, in order."""
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


def _read_sentences(argv: list[str]) -> list[str]:
    if _INPUT.value and argv:
        raise TranslationError("Give sentences as arguments or --input, not both.")
    if _INPUT.value == "-":
        sentences = [line.rstrip("\n") for line in sys.stdin]
    elif _INPUT.value:
        if not tf.io.gfile.exists(_INPUT.value):
            raise TranslationError(f"--input {_INPUT.value} does not exist.")
        with tf.io.gfile.GFile(_INPUT.value) as f:
            sentences = [line.rstrip("\n") for line in f]
    else:
        sentences = list(argv)
    if not sentences:
        raise TranslationError("Nothing to translate: pass sentences, or --input FILE / -.")
    return sentences


def main(argv):
    try:
        sentences = _read_sentences(argv[1:])
        signature = load_translator(_MODEL.value)
    except TranslationError as e:
        raise app.UsageError(str(e)) from None
    out = tf.io.gfile.GFile(_OUTPUT.value, "w") if _OUTPUT.value else sys.stdout
    try:
        for hypotheses, _ in translate(signature, sentences, _BATCH.value, _NBEST.value):
            out.write("\t".join(hypotheses) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()


def run():
    app.run(main)


if __name__ == "__main__":
    run()
