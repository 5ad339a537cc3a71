"""Attention heatmaps, training curves and TensorBoard attention images (trainer/plots.py)."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from matplotlib import image as mpl_image

from pipeline import text
from tests import dataset_fixture
from trainer import plots

SENTENCES = ["Click OK.", "Select a cell in the table."]


@pytest.fixture(scope="module")
def trainer(small_dataset, tmp_path_factory):
    """An untrained tiny model: attention pictures need weights, not good ones."""
    model_dir = str(tmp_path_factory.mktemp("run"))
    return dataset_fixture.tiny_trainer(small_dataset.root, model_dir)


@pytest.fixture(scope="module")
def attention(trainer):
    source_tokenizer = text.SubwordTokenizer(trainer.source_tokens)
    return plots.attention_for_sentences(
        trainer.model, source_tokenizer, trainer.target_tokenizer, SENTENCES
    )


def _history(tmp_path):
    train = [
        {"step": s, "loss": 6.0 - s / 100, "sampling_probability": min(0.25, s / 400)}
        for s in range(10, 110, 10)
    ]
    evals = [{"step": s, "split": "dev", "loss": 5.5 - s / 100, "bleu": s / 10} for s in (50, 100)]
    evals.append({"step": 100, "split": "test", "loss": 9.0, "bleu": 99.0})
    paths = str(tmp_path / "train_history.jsonl"), str(tmp_path / "eval_history.jsonl")
    for path, records in zip(paths, (train, evals), strict=True):
        with open(path, "w") as f:
            f.write("".join(json.dumps(r) + "\n" for r in records))
    return paths, train, evals


def _png_shape(path):
    assert os.path.getsize(path) > 10_000, f"{path} is suspiciously small"
    return mpl_image.imread(path).shape


def test_attention_is_cut_to_real_lengths_and_rows_are_distributions(attention):
    sources, targets, alignments = attention
    assert len(sources) == len(targets) == len(alignments) == len(SENTENCES)
    for source, target, alignment in zip(sources, targets, alignments, strict=True):
        assert source[-1] == "[EOS]" and "[PAD]" not in source
        assert alignment.shape == (len(target), len(source))
        np.testing.assert_allclose(alignment.sum(axis=1), 1.0, atol=1e-5)
    # The longer sentence has more source pieces: each alignment has its own width.
    assert len(sources[1]) > len(sources[0])


def test_attention_heatmaps_are_labelled_pngs(attention, tmp_path):
    sources, targets, alignments = attention
    written = plots.save_attention_heatmaps(
        sources, targets, alignments, str(tmp_path / "plots" / "attention")
    )
    assert written == [str(tmp_path / "plots" / f"attention_{i}.png") for i in range(2)]
    for path in written:
        height, width, channels = _png_shape(path)
        assert height >= 300 and width >= 400 and channels in (3, 4)
    fig = plots.attention_figure(sources[1], targets[1], alignments[1])
    heatmap, colorbar = fig.axes
    assert [t.get_text() for t in heatmap.get_xticklabels()] == sources[1]
    assert [t.get_text() for t in heatmap.get_yticklabels()] == targets[1]
    assert heatmap.get_xlabel() == "source pieces"
    assert colorbar.get_ylabel() == "attention weight"


def test_heatmap_refuses_an_alignment_that_does_not_match_the_pieces():
    with pytest.raises(ValueError, match="2 target and 3 source pieces"):
        plots.attention_figure(["a", "b", "[EOS]"], ["x", "[EOS]"], np.ones([3, 2]))


def test_training_curves_have_three_labelled_panels_and_skip_test_records(tmp_path):
    (train_path, eval_path), train, evals = _history(tmp_path)
    fig = plots.training_curves_figure(train, evals)
    loss_ax, bleu_ax, sampling_ax = fig.axes
    assert [ax.get_ylabel() for ax in fig.axes] == [
        "loss per token",
        "dev BLEU",
        "sampling probability",
    ]
    assert sampling_ax.get_xlabel() == "step"
    assert [line.get_label() for line in loss_ax.get_lines()] == [
        "train loss (label-smoothed)",
        "dev loss (NLL)",
    ]
    assert list(bleu_ax.get_lines()[0].get_ydata()) == [5.0, 10.0]  # no test-split point
    png = plots.save_training_curves(train_path, eval_path, str(tmp_path / "out" / "curves.png"))
    assert _png_shape(png)[:2] == (800, 700)


def test_training_curves_without_evaluations_and_without_history(tmp_path):
    (train_path, _), _, _ = _history(tmp_path)
    png = plots.save_training_curves(
        train_path, str(tmp_path / "none.jsonl"), str(tmp_path / "c.png")
    )
    assert _png_shape(png)[:2] == (800, 700)
    with pytest.raises(FileNotFoundError, match="trained at least one loop"):
        plots.save_training_curves(str(tmp_path / "missing.jsonl"), "", str(tmp_path / "x.png"))


def test_run_plots_land_in_the_run_layout(trainer, tmp_path):
    (train_path, eval_path), _, _ = _history(tmp_path)
    shutil.copy(train_path, trainer.layout.train_history)
    shutil.copy(eval_path, trainer.layout.eval_history)
    written = plots.save_run_plots(trainer, num_sentences=2)
    names = ["training_curves.png", "attention_0.png", "attention_1.png"]
    assert written == [os.path.join(trainer.layout.plots, name) for name in names]
    assert all(_png_shape(path) for path in written)


def test_attention_images_reach_tensorboard(attention, trainer, tmp_path):
    _, targets, alignments = attention
    image = plots.attention_image(alignments[0])
    assert image.dtype == tf.uint8
    assert image.shape == (1, len(targets[0]) * 8, alignments[0].shape[1] * 8, 1)
    assert int(tf.reduce_max(image)) == 255
    writer = tf.summary.create_file_writer(str(tmp_path / "tb"))
    with writer.as_default():
        source_tokenizer = text.SubwordTokenizer(trainer.source_tokens)
        plots.write_attention_summaries(
            trainer.model, source_tokenizer, trainer.target_tokenizer, SENTENCES, step=7
        )
    writer.flush()
    tags = set()
    for event_file in tf.io.gfile.glob(str(tmp_path / "tb" / "events.*")):
        for event in tf.compat.v1.train.summary_iterator(event_file):
            tags.update(v.tag for v in event.summary.value if event.step == 7)
    assert tags == {"attention/0", "attention/1"}


def test_importing_the_trainer_does_not_import_matplotlib():
    script = (
        "import sys\n"
        "from trainer import plots, train_loop\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported at start-up'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=dataset_fixture.REPO
    )
    assert result.returncode == 0, result.stderr[-2000:]
