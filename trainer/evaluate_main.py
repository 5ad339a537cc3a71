"""`nmt-evaluate`: BLEU and chrF of an exported SavedModel on a dataset split or on text files.

    nmt-evaluate --model=RUN/export --data_dir=DATA --split=test
    nmt-evaluate --model=RUN/export --source_file=src.txt --reference_file=ref.txt

Scores the model as it is served: raw source text goes into the SavedModel and its detokenized
output is scored by sacreBLEU against raw references, so the numbers and signatures are
comparable with any other system's.
"""

import json

from pipeline import console

console.start_if_program("nmt-evaluate", __name__)  # before TensorFlow is imported

import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from pipeline import features, paths  # noqa: E402
from pipeline import metadata as metadata_lib  # noqa: E402
from trainer import evaluation, serving  # noqa: E402

_MODEL = flags.DEFINE_string("model", None, "Exported SavedModel directory.")
_OUTPUT = flags.DEFINE_string("output", None, "Also write the hypotheses here, one per line.")
_BATCH = flags.DEFINE_integer(
    "batch_size", serving.DEFAULT_CALL_SIZE, serving.CALL_SIZE_HELP, lower_bound=1
)
_STREAMS = flags.DEFINE_integer(
    "streams", serving.DEFAULT_STREAMS, "Batches decoded at once (threads).", lower_bound=1
)
_PRODUCTS = flags.DEFINE_enum("precision", "auto", serving.PRODUCTS, serving.PRODUCTS_HELP)
flags.mark_flag_as_required("model")

_DATA_DIR = flags.DEFINE_string("data_dir", None, "Preprocessed dataset to read --split from.")
_SPLIT = flags.DEFINE_enum("split", "test", list(paths.SPLITS), "Split of --data_dir to score.")
_SOURCE_FILE = flags.DEFINE_string(
    "source_file", None, "Source sentences, one per line (with --reference_file)."
)
_REFERENCE_FILE = flags.DEFINE_string(
    "reference_file", None, "Reference translations, line by line with --source_file."
)
_RESULTS_JSON = flags.DEFINE_string(
    "results_json", None, "Also write the scores, signatures and inputs here as JSON."
)


def read_split(data_dir: str, split: str) -> tuple[list[str], list[str]]:
    """(sources, references): the normalised raw text of every pair of `split`, in shard order."""
    layout = paths.DatasetLayout(data_dir)
    metadata_lib.read_metadata(layout)  # Refuses a dataset the preprocess job did not finish.
    files = sorted(tf.io.gfile.glob(layout.shard_pattern(split)))
    if not files:
        raise serving.TranslationError(
            f"No {split} shards match {layout.shard_pattern(split)}: is {data_dir} a dataset "
            "written by nmt-preprocess?"
        )
    sources, references = [], []
    for record in tf.data.TFRecordDataset(files).map(features.parse_example):
        sources.append(record[features.SOURCE_TEXT].numpy().decode("utf-8"))
        references.append(record[features.TARGET_TEXT].numpy().decode("utf-8"))
    return sources, references


def _read_lines(path: str, flag: str) -> list[str]:
    if not tf.io.gfile.exists(path):
        raise serving.TranslationError(f"--{flag} {path} does not exist.")
    with tf.io.gfile.GFile(path) as f:
        return [line.rstrip("\n") for line in f]


def read_parallel_files(source_file: str, reference_file: str) -> tuple[list[str], list[str]]:
    """(sources, references) from two line-aligned text files; refuses files that do not align."""
    sources = _read_lines(source_file, "source_file")
    references = _read_lines(reference_file, "reference_file")
    if len(sources) != len(references):
        raise serving.TranslationError(
            f"--source_file {source_file} has {len(sources)} lines but --reference_file "
            f"{reference_file} has {len(references)}: the files must be line-aligned, one "
            "sentence pair per line."
        )
    if not sources:
        raise serving.TranslationError(f"--source_file {source_file} is empty.")
    return sources, references


def _read_inputs() -> tuple[list[str], list[str], dict]:
    """(sources, references, a description of the input for the results file)."""
    files = (_SOURCE_FILE.value, _REFERENCE_FILE.value)
    if _DATA_DIR.value and any(files):
        raise serving.TranslationError(
            "Give either --data_dir (with --split) or --source_file and --reference_file, not both."
        )
    if _DATA_DIR.value:
        sources, references = read_split(_DATA_DIR.value, _SPLIT.value)
        return sources, references, {"data_dir": _DATA_DIR.value, "split": _SPLIT.value}
    if not all(files):
        raise serving.TranslationError(
            "Nothing to score: give --data_dir (with --split), or both --source_file and "
            "--reference_file."
        )
    sources, references = read_parallel_files(*files)
    return sources, references, {"source_file": files[0], "reference_file": files[1]}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    # Before reading, which starts TensorFlow: a split is usually several calls.
    serving.share_cores(_STREAMS.value)
    try:
        sources, references, inputs = _read_inputs()
        translator = serving.load_translator(_MODEL.value, _PRODUCTS.value)
    except (serving.TranslationError, metadata_lib.DatasetError) as e:
        raise app.UsageError(str(e)) from None
    translations = serving.translate(translator, sources, _BATCH.value, streams=_STREAMS.value)
    hypotheses = [nbest[0] for nbest, _ in translations]
    scores = evaluation.corpus_scores(hypotheses, references)
    print(f"{scores['sentences']} sentences")
    print(f"BLEU = {scores['bleu']:.2f}  {scores['bleu_signature']}")
    print(f"chrF = {scores['chrf']:.2f}  {scores['chrf_signature']}")
    if _OUTPUT.value:
        with tf.io.gfile.GFile(_OUTPUT.value, "w") as f:
            f.write("".join(h + "\n" for h in hypotheses))
    if _RESULTS_JSON.value:
        with tf.io.gfile.GFile(_RESULTS_JSON.value, "w") as f:
            json.dump(
                {"model": _MODEL.value, "products": translator.products, **inputs, **scores},
                f,
                indent=2,
            )


def run():
    app.run(main)


if __name__ == "__main__":
    run()
