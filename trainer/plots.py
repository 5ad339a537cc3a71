"""Pictures of a run: attention heatmaps, training curves and attention images for TensorBoard.

Drawing uses matplotlib's object API on the Agg canvas (no display, no pyplot global state), and
matplotlib is imported only inside the functions that draw, so a training job that never plots
does not pay for it. Files are written through `tf.io.gfile`, so a `gs://` run directory works.
"""

import io
import json
import os

import numpy as np
import tensorflow as tf

from pipeline import features, text
from trainer import data

# Pixels per alignment cell in TensorBoard images: a 20x20 alignment becomes 160x160.
_CELL_PIXELS = 8
# Figure inches per token on the heatmap axes, and the minimum figure size.
_INCHES_PER_TOKEN = 0.3
_MIN_INCHES = (4.0, 3.0)


def attention_for_sentences(seq2seq, source_tokenizer, target_tokenizer, sentences: list[str]):
    """Greedy-translates raw sentences and returns what each output piece attended to.

    Sources go in as the exported model takes them (normalised, tokenized, EOS appended), so a
    picture shows what the model attends to on real input, EOS included. Greedy rather than beam
    search: the alignment history is recorded by the attention wrapper of the greedy decoder.

    Args:
      seq2seq: a `model.Seq2Seq` with its weights (e.g. `trainer.decoding_model()`).
      source_tokenizer: `text.SubwordTokenizer` of the source vocabulary.
      target_tokenizer: `text.SubwordTokenizer` of the target vocabulary.
      sentences: raw source sentences.

    Returns:
      (source_pieces, target_pieces, alignments): per sentence, the source pieces (ending in
      EOS), the generated pieces (ending in EOS when the decoder emitted it) and the alignment
      [len(target_pieces), len(source_pieces)] whose rows are attention distributions.
    """
    normalized = tf.constant([text.normalize(s) for s in sentences])
    source_ids, source_lengths = data.source_batch(source_tokenizer.tokenize(normalized))
    ids, lengths, state = seq2seq.greedy_decode(source_ids, source_lengths, alignment_history=True)
    # [T, B, S] -> [B, T, S]
    history = tf.transpose(state.alignment_history.stack(), [1, 0, 2]).numpy()
    source_pieces, target_pieces, alignments = [], [], []
    for row, (source_length, target_length) in enumerate(
        zip(source_lengths.numpy(), lengths.numpy(), strict=True)
    ):
        source_pieces.append(_pieces(source_tokenizer, source_ids[row, :source_length]))
        target_pieces.append(_pieces(target_tokenizer, ids[row, :target_length]))
        alignments.append(history[row, :target_length, :source_length])
    return source_pieces, target_pieces, alignments


def _pieces(tokenizer, ids) -> list[str]:
    return [p.decode("utf-8") for p in tokenizer.ids_to_pieces(ids).numpy()]


def attention_figure(source_pieces: list[str], target_pieces: list[str], alignment):
    """A heatmap Figure: source pieces on x, target pieces on y, with a colour bar."""
    alignment = np.asarray(alignment, dtype=np.float32)
    expected = (len(target_pieces), len(source_pieces))
    if alignment.shape != expected:
        raise ValueError(
            f"Alignment has shape {alignment.shape} but there are {expected[0]} target and "
            f"{expected[1]} source pieces; pass the alignment cut to the real lengths "
            "(attention_for_sentences does)."
        )
    width = max(_MIN_INCHES[0], _INCHES_PER_TOKEN * len(source_pieces) + 2.0)
    height = max(_MIN_INCHES[1], _INCHES_PER_TOKEN * len(target_pieces) + 1.5)
    fig = _new_figure((width, height))
    ax = fig.add_subplot()
    image = ax.imshow(alignment, aspect="auto", cmap="viridis", vmin=0.0, interpolation="nearest")
    ax.set_xticks(range(len(source_pieces)), source_pieces, rotation=90)
    ax.set_yticks(range(len(target_pieces)), target_pieces)
    ax.set_xlabel("source pieces")
    ax.set_ylabel("generated target pieces")
    fig.colorbar(image, ax=ax, label="attention weight")
    return fig


def save_attention_heatmaps(
    sources_pieces: list[list[str]],
    targets_pieces: list[list[str]],
    alignments: list,
    path_prefix: str,
) -> list[str]:
    """Writes one PNG per sentence, `{path_prefix}_{i}.png`; returns the paths written."""
    if not len(sources_pieces) == len(targets_pieces) == len(alignments):
        raise ValueError(
            f"Got {len(sources_pieces)} source, {len(targets_pieces)} target piece lists and "
            f"{len(alignments)} alignments; pass one of each per sentence."
        )
    written = []
    for i, (source, target, alignment) in enumerate(
        zip(sources_pieces, targets_pieces, alignments, strict=True)
    ):
        path = f"{path_prefix}_{i}.png"
        _write_png(attention_figure(source, target, alignment), path)
        written.append(path)
    return written


def _read_jsonl(path: str) -> list[dict]:
    with tf.io.gfile.GFile(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def training_curves_figure(train_records: list[dict], eval_records: list[dict]):
    """A Figure of three panels sharing the step axis: losses, dev BLEU, sampling probability.

    Args:
      train_records: train_history.jsonl records (step, loss, sampling_probability).
      eval_records: eval_history.jsonl records; only split 'dev' is drawn (the final test
        evaluation is one point at the last step and belongs in test_results.json).
    """
    dev = [r for r in eval_records if r.get("split") == "dev"]
    fig = _new_figure((7.0, 8.0))
    loss_ax, bleu_ax, sampling_ax = fig.subplots(3, 1, sharex=True)
    loss_ax.plot(*_series(train_records, "loss"), label="train loss (label-smoothed)")
    if dev:
        loss_ax.plot(*_series(dev, "loss"), marker="o", label="dev loss (NLL)")
    loss_ax.set_ylabel("loss per token")
    loss_ax.legend()
    bleu_ax.plot(*_series(dev, "bleu"), marker="o", color="tab:green")
    bleu_ax.set_ylabel("dev BLEU")
    sampling_ax.plot(*_series(train_records, "sampling_probability"), color="tab:purple")
    sampling_ax.set_ylabel("sampling probability")
    sampling_ax.set_xlabel("step")
    for ax in (loss_ax, bleu_ax, sampling_ax):
        ax.grid(alpha=0.3)
    return fig


def _series(records: list[dict], key: str) -> tuple[list, list]:
    return [r["step"] for r in records], [r[key] for r in records]


def save_training_curves(train_history_path: str, eval_history_path: str, png_path: str) -> str:
    """Draws `training_curves_figure` from a run's history files into `png_path`.

    A missing eval history (no evaluation yet) leaves the dev curves empty; a missing train
    history is an error, since there is nothing to draw.
    """
    if not tf.io.gfile.exists(train_history_path):
        raise FileNotFoundError(
            f"{train_history_path} does not exist: plot a run directory after it has trained "
            "at least one loop."
        )
    train = _read_jsonl(train_history_path)
    evals = _read_jsonl(eval_history_path) if tf.io.gfile.exists(eval_history_path) else []
    _write_png(training_curves_figure(train, evals), png_path)
    return png_path


def attention_image(alignment) -> tf.Tensor:
    """Alignment [T, S] -> uint8 image [1, T*k, S*k, 1] for `tf.summary.image`.

    Rows are target pieces and columns source pieces, as in the heatmaps; brightness is the
    weight relative to the largest one. Each cell is enlarged to k x k pixels so short sentences
    stay visible in TensorBoard.
    """
    alignment = tf.convert_to_tensor(alignment, tf.float32)
    scaled = alignment / tf.maximum(tf.reduce_max(alignment), 1e-9)
    pixels = tf.cast(tf.round(scaled * 255.0), tf.uint8)
    pixels = tf.repeat(tf.repeat(pixels, _CELL_PIXELS, axis=0), _CELL_PIXELS, axis=1)
    return pixels[tf.newaxis, :, :, tf.newaxis]


def write_attention_summaries(seq2seq, source_tokenizer, target_tokenizer, sentences, step):
    """Logs one attention image per sentence to the default summary writer at `step`."""
    _, _, alignments = attention_for_sentences(
        seq2seq, source_tokenizer, target_tokenizer, sentences
    )
    for i, alignment in enumerate(alignments):
        tf.summary.image(f"attention/{i}", attention_image(alignment), step=step)


_PROSE_WORDS = (6, 16)


def save_run_plots(trainer, num_sentences: int = 3) -> list[str]:
    """Writes a run's training curves and a few dev sentences' heatmaps into its plots/.

    Args:
      trainer: a `train_loop.Trainer` holding the weights to picture (e.g. the exported ones).
      num_sentences: dev sentences to draw attention heatmaps for.

    Returns:
      The PNG paths written.
    """
    layout = trainer.layout
    written = [
        save_training_curves(
            layout.train_history,
            layout.eval_history,
            os.path.join(layout.plots, "training_curves.png"),
        )
    ]
    sentences = []
    for batch in data.make_eval_dataset(trainer.cfg.data, "dev", 500, with_text=True):
        sentences += [s.decode("utf-8") for s in batch[features.SOURCE_TEXT].numpy()]
    # Prefer real sentences to headings and formulas: they make readable alignments.
    prose = [s for s in sentences if _PROSE_WORDS[0] <= len(s.split()) <= _PROSE_WORDS[1]]
    sentences = (prose or sentences)[:num_sentences]
    if sentences:
        pictures = attention_for_sentences(
            trainer.decoding_model(), trainer.source_tokenizer, trainer.target_tokenizer, sentences
        )
        written += save_attention_heatmaps(*pictures, os.path.join(layout.plots, "attention"))
    return written


def _new_figure(size: tuple[float, float]):
    """A Figure on its own Agg canvas: renders without a display and outside pyplot's state."""
    from matplotlib import figure
    from matplotlib.backends import backend_agg

    fig = figure.Figure(figsize=size, layout="constrained")
    backend_agg.FigureCanvasAgg(fig)
    return fig


def _write_png(fig, path: str):
    directory = os.path.dirname(path)
    if directory:
        tf.io.gfile.makedirs(directory)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(buffer.getvalue())
