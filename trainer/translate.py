"""`nmt-translate`: translate sentences with an exported SavedModel.

Loads the model through `trainer.serving`, with plain TensorFlow plus TF Text's ops and none of
the training code.
"""

import sys

from pipeline import console

console.start_if_program("nmt-translate", __name__)  # before TensorFlow is imported

import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from trainer import serving  # noqa: E402

_MODEL = flags.DEFINE_string("model", None, "Exported SavedModel directory.")
_INPUT = flags.DEFINE_string("input", None, "File of source sentences, one per line ('-': stdin).")
_OUTPUT = flags.DEFINE_string("output", None, "Write translations here instead of stdout.")
_BATCH = flags.DEFINE_integer(
    "batch_size", serving.DEFAULT_CALL_SIZE, serving.CALL_SIZE_HELP, lower_bound=1
)
_STREAMS = flags.DEFINE_integer(
    "streams", serving.DEFAULT_STREAMS, "Batches decoded at once (threads).", lower_bound=1
)
_PRODUCTS = flags.DEFINE_enum("precision", "auto", serving.PRODUCTS, serving.PRODUCTS_HELP)
_NBEST = flags.DEFINE_integer(
    "n_best", 1, "Write the n best hypotheses per sentence, tab-separated."
)
flags.mark_flag_as_required("model")


def _read_sentences(argv: list[str]) -> list[str]:
    if _INPUT.value and argv:
        raise serving.TranslationError("Give sentences as arguments or --input, not both.")
    if _INPUT.value == "-":
        sentences = [line.rstrip("\n") for line in sys.stdin]
    elif _INPUT.value:
        if not tf.io.gfile.exists(_INPUT.value):
            raise serving.TranslationError(f"--input {_INPUT.value} does not exist.")
        with tf.io.gfile.GFile(_INPUT.value) as f:
            sentences = [line.rstrip("\n") for line in f]
    else:
        sentences = list(argv)
    if not sentences:
        raise serving.TranslationError("Nothing to translate: pass sentences, or --input FILE / -.")
    return sentences


def main(argv):
    try:
        sentences = _read_sentences(argv[1:])
        serving.share_cores(_STREAMS.value, calls=-(-len(sentences) // _BATCH.value))
        translator = serving.load_translator(_MODEL.value, _PRODUCTS.value)
    except serving.TranslationError as e:
        raise app.UsageError(str(e)) from None
    out = tf.io.gfile.GFile(_OUTPUT.value, "w") if _OUTPUT.value else sys.stdout
    try:
        for hypotheses, _ in serving.translate(
            translator, sentences, _BATCH.value, _NBEST.value, _STREAMS.value
        ):
            out.write("\t".join(hypotheses) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()


def run():
    app.run(main)


if __name__ == "__main__":
    run()
