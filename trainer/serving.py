"""Load an exported SavedModel and translate with it: shared by nmt-translate and nmt-evaluate.

Imports only TensorFlow and TF Text (whose ops the graph uses), never the model code, so it shows
what any serving system needs to run an export (`pipeline.console`, for progress lines, and
`trainer.precision`, which says where bfloat16 is native, are plain Python).
"""

import concurrent.futures
import json
import os
from typing import NamedTuple

import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the tokenizer ops the SavedModel uses)
from absl import logging

from pipeline import console
from trainer import precision

# Must match pipeline.features.SCHEMA_VERSION and trainer/export.py's EXPORT_INFO; kept literal
# so serving code stays independent of the training code.
SCHEMA_VERSION = 1
EXPORT_INFO = "export_info.json"
SIGNATURE = "serving_default"
LENGTHS_SIGNATURE = "source_lengths"  # trainer/export.py's LENGTHS_SIGNATURE
# The matrix products a tool may ask of an export's search.
PRODUCTS = ("auto", "float32", "bfloat16")
PRODUCTS_HELP = (
    "Matrix products of the search: 'auto' runs the export's bfloat16 search where this host "
    "computes bfloat16 natively (a CPU with AVX512-BF16 or AMX, a GPU of compute capability "
    "8.0 and up) and the export has one, else its float32 search."
)
# Sentences whose pieces are counted in one call of LENGTHS_SIGNATURE.
_COUNT_CHUNK = 4096
# Batches decoded at once. One decode is a loop of small ops, single-threaded between its matrix
# products, so a second one running beside it fills the idle core: on the 2-core EPYC host, 2
# streams gave beam 4 1.2-1.5x and greedy about 1.3x the sentences/s of one (three A/B runs),
# and 3 or 4 streams not consistently more than 2 (README, "Translate and serve"). Outputs do
# not depend on it.
DEFAULT_STREAMS = 2
# Sentences per call. The model decodes up to its `model.decode_slots` of them at once and starts
# the next waiting sentence where one ends, so a call of several times the slots keeps its steps
# full instead of running on for its longest translation: on the 2-core EPYC host, calls of 256
# with 32 slots decoded 1.47x (greedy) and 1.28x (beam 4) the sentences/s of calls of 32 (one
# run, in-process; README, "Translate and serve"). Larger calls pad every source to a longer one.
DEFAULT_CALL_SIZE = 256
CALL_SIZE_HELP = (
    "Sentences per call; the model decodes up to its decode_slots of them at once, each "
    "sentence that ends making room for the next."
)


class TranslationError(RuntimeError):
    """The model or the input cannot be used; the message says why."""


class ExportSignatures(NamedTuple):
    """An export's signatures: `translate` (raw strings in and out), `source_lengths` (raw
    strings -> source pieces; None in exports made before it), and the `products` (float32 or
    bfloat16) `translate` multiplies in."""

    translate: object
    source_lengths: object
    products: str


def host_choice() -> precision.Choice:
    """Whether this host computes bfloat16 natively, decided as training's 'auto' decides it."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability")
        return precision.choose(precision.AUTO, "gpu", gpu_capability=capability)
    return precision.choose(precision.AUTO, "cpu", flags=precision.cpu_flags())


def _products(policy: str) -> str:
    return "bfloat16" if policy == precision.BFLOAT16 else "float32"


def choose_signature(signature_precisions: dict, products: str, host: precision.Choice | None):
    """(signature name, its products) for `products` ('auto', 'float32' or 'bfloat16') among
    an export's `signature_precisions` (name -> Keras policy): 'auto' takes bfloat16 where
    the `host` choice (read for 'auto' only) is bfloat16 and the export has it, else
    `serving_default`."""
    by_products = {_products(policy): name for name, policy in signature_precisions.items()}
    if products == "auto":
        if host.is_mixed and "bfloat16" in by_products:
            return by_products["bfloat16"], "bfloat16"
        return SIGNATURE, _products(signature_precisions[SIGNATURE])
    if products not in by_products:
        raise TranslationError(
            f"the export has no {products} search (it has: {', '.join(sorted(by_products))}); "
            "export with model.export_precision=auto for both."
        )
    return by_products[products], products


def load_translator(model_dir: str, products: str = "auto") -> ExportSignatures:
    """Loads the export's signatures after checking its schema version; `products` chooses
    its search (`choose_signature`)."""
    if not tf.io.gfile.exists(os.path.join(model_dir, "saved_model.pb")):
        raise TranslationError(f"{model_dir} is not an exported model (no saved_model.pb).")
    info_path = os.path.join(model_dir, EXPORT_INFO)
    info = {}
    if tf.io.gfile.exists(info_path):
        with tf.io.gfile.GFile(info_path) as f:
            info = json.load(f)
        if info.get("schema_version") != SCHEMA_VERSION:
            raise TranslationError(
                f"{model_dir} was exported with schema version {info.get('schema_version')}; "
                f"this tool reads {SCHEMA_VERSION}. Re-export the model with this version."
            )
    # Exports made before the bfloat16 signature name their one search's policy.
    precisions = info.get("signature_precisions") or {
        SIGNATURE: info.get("precision", precision.FLOAT32)
    }
    try:
        host = host_choice() if products == "auto" else None  # only 'auto' asks the host
        name, products = choose_signature(precisions, products, host)
    except TranslationError as e:
        raise TranslationError(f"{model_dir}: {e}") from None
    logging.info("%s: searching with %s products (signature %s).", model_dir, products, name)
    signatures = tf.saved_model.load(model_dir).signatures
    return ExportSignatures(signatures[name], signatures.get(LENGTHS_SIGNATURE), products)


def length_order(sentences: list[str], source_lengths=None) -> list[int]:
    """Indices of `sentences` from shortest to longest (stable): in source pieces when the
    export's `source_lengths` signature is given, else in characters.

    Each call pads its sources to its longest in pieces. On `bench/decode.py`'s 2,679 test
    sentences in calls of 256, the encoder ran over 1.17x the real pieces sorted by pieces,
    1.93x by characters and 2.45x by words then characters; the greedy SavedModel decoded them
    15-19% faster sorted by pieces than by characters (two runs).
    """
    if source_lengths is None:
        lengths = [len(sentence) for sentence in sentences]
    else:
        lengths = []
        for start in range(0, len(sentences), _COUNT_CHUNK):
            chunk = tf.constant(sentences[start : start + _COUNT_CHUNK])
            lengths.extend(source_lengths(sources=chunk)["lengths"].numpy().tolist())
    return sorted(range(len(sentences)), key=lambda i: lengths[i])


def share_cores(streams: int, calls: int | None = None) -> int:
    """Gives each of `streams` decodes running at once (no more than `calls`, where the job's
    calls are known) its share of the cores for the inner parallelism of its ops (TensorFlow's
    intra-op threads: cores // streams); returns that share, or 0 where nothing was set (one
    stream, or TensorFlow already running).

    Two decodes whose matrix products each split over every core contend for the cores: on the
    2-core EPYC-BF16 host, 2 streams with one thread per op decoded 1.28-1.40x (greedy) and
    1.26x (beam 4) the sentences/s of 2 streams with TensorFlow's default (README, "Translate
    and serve"). Must run before TensorFlow runs its first op.
    """
    if calls is not None:
        streams = min(streams, calls)
    if streams <= 1:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = max(1, (cores or 1) // streams)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow already started (a tool's main() called in-process)
        logging.info("TensorFlow already started: its ops keep their threads.")
        return 0
    return threads


def in_streams(decode, batches, streams: int = DEFAULT_STREAMS):
    """decode(batch) for each of `batches`, in order, with up to `streams` running at once.

    TensorFlow releases the GIL while a function runs, so threads are enough. A consumer that
    stops early cancels the batches not yet started.
    """
    if streams == 1:
        yield from map(decode, batches)
        return
    pool = concurrent.futures.ThreadPoolExecutor(streams, thread_name_prefix="decode")
    try:
        yield from pool.map(decode, batches)
    finally:
        pool.shutdown(cancel_futures=True)


def translate(
    translator: ExportSignatures,
    sentences: list[str],
    batch_size: int = DEFAULT_CALL_SIZE,
    n_best: int = 1,
    streams: int = DEFAULT_STREAMS,
):
    """(n-best list, best score) per sentence, in input order.

    The model sees the sentences in length-sorted calls, `streams` at once; results come back
    in input order.
    """
    order = length_order(sentences, translator.source_lengths)
    progress = (
        console.Progress("translating", len(sentences)) if len(sentences) > batch_size else None
    )
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]

    def decode(indices):
        out = translator.translate(sources=tf.constant([sentences[i] for i in indices]))
        return out["nbest"].numpy(), out["scores"].numpy().tolist()

    results = [None] * len(sentences)
    for indices, (nbest_bytes, scores) in zip(
        batches, in_streams(decode, batches, streams), strict=True
    ):
        nbest = [[s.decode("utf-8") for s in row[:n_best]] for row in nbest_bytes]
        for i, hypotheses, score in zip(indices, nbest, scores, strict=True):
            results[i] = (hypotheses, score)
        if progress:
            progress.add(len(indices))
    return results
