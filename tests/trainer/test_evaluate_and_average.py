"""nmt-evaluate on a split and on text files; averaging checkpoints (trainer/averaging.py)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests import dataset_fixture
from trainer import averaging, evaluate_main, evaluation, serving

BLEU_SIGNATURE = "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:"
CHRF_SIGNATURE = "nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:"


@pytest.fixture(scope="module")
def trainer(small_dataset, tmp_path_factory):
    """The tiny config, untrained: scoring and averaging need weights, not good ones."""
    model_dir = str(tmp_path_factory.mktemp("run"))
    return dataset_fixture.tiny_trainer(small_dataset.root, model_dir)


@pytest.fixture(scope="module")
def export_dir(tiny_export):
    """The session's untrained tiny export (tests/conftest.py)."""
    return tiny_export


def _evaluate(*args):
    return subprocess.run(
        [sys.executable, "-m", "trainer.evaluate_main", *args],
        capture_output=True,
        text=True,
        cwd=dataset_fixture.REPO,
    )


@pytest.fixture(scope="module")
def test_split_scores(export_dir, small_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluate")
    result = _evaluate(
        f"--model={export_dir}",
        f"--data_dir={small_dataset.root}",
        "--split=test",
        "--batch_size=16",
        f"--output={out / 'hypotheses.txt'}",
        f"--results_json={out / 'results.json'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out / "results.json") as f:
        results = json.load(f)
    with open(out / "hypotheses.txt", encoding="utf-8") as f:
        hypotheses = f.read().splitlines()
    return result.stdout, results, hypotheses


def test_split_mode_prints_scores_with_sacrebleu_signatures(test_split_scores, small_dataset):
    stdout, results, hypotheses = test_split_scores
    sources, references = evaluate_main.read_split(small_dataset.root, "test")
    assert len(sources) == len(references) == len(hypotheses) == 40
    lines = stdout.splitlines()
    assert lines[0] == "40 sentences"
    assert lines[1].startswith(f"BLEU = {results['bleu']:.2f}  {BLEU_SIGNATURE}")
    assert lines[2].startswith(f"chrF = {results['chrf']:.2f}  {CHRF_SIGNATURE}")
    # The export holds both searches; the tool took the one this host computes natively.
    host_products = "bfloat16" if serving.host_choice().is_mixed else "float32"
    assert results == {
        "model": results["model"],
        "products": host_products,
        "data_dir": small_dataset.root,
        "split": "test",
        **evaluation.corpus_scores(hypotheses, references),
    }


def test_file_mode_scores_the_same_text_the_same(
    test_split_scores, export_dir, small_dataset, tmp_path
):
    _, split_results, _ = test_split_scores
    sources, references = evaluate_main.read_split(small_dataset.root, "test")
    (tmp_path / "src.txt").write_text("".join(s + "\n" for s in sources), encoding="utf-8")
    (tmp_path / "ref.txt").write_text("".join(r + "\n" for r in references), encoding="utf-8")
    result = _evaluate(
        f"--model={export_dir}",
        f"--source_file={tmp_path / 'src.txt'}",
        f"--reference_file={tmp_path / 'ref.txt'}",
        f"--results_json={tmp_path / 'results.json'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "results.json") as f:
        results = json.load(f)
    for key in ("bleu", "chrf", "bleu_signature", "chrf_signature", "sentences"):
        assert results[key] == split_results[key], key


def test_file_mode_refuses_files_that_do_not_align(export_dir, tmp_path):
    source, reference = tmp_path / "src.txt", tmp_path / "ref.txt"
    source.write_text("a\nb\nc\n")
    reference.write_text("x\ny\n")
    result = _evaluate(
        f"--model={export_dir}", f"--source_file={source}", f"--reference_file={reference}"
    )
    assert result.returncode != 0
    assert (
        f"--source_file {source} has 3 lines but --reference_file {reference} has 2"
        in result.stderr
    )


def test_parallel_files_must_exist_and_be_non_empty(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(serving.TranslationError, match="is empty"):
        evaluate_main.read_parallel_files(str(empty), str(empty))
    with pytest.raises(serving.TranslationError, match="does not exist"):
        evaluate_main.read_parallel_files(str(tmp_path / "missing.txt"), str(empty))


def _weights(trainer):
    return [v.numpy() for v in trainer.model.variables]


def test_averaging_two_checkpoints_gives_the_elementwise_mean(trainer, tmp_path):
    manager = tf.train.CheckpointManager(trainer.checkpoint, str(tmp_path), max_to_keep=3)
    first = _weights(trainer)
    manager.save(checkpoint_number=1)
    rng = np.random.default_rng(0)
    for variable in trainer.model.variables:
        variable.assign(variable.numpy() + rng.normal(size=variable.shape).astype(np.float32))
    second = _weights(trainer)
    manager.save(checkpoint_number=2)
    trainer.optimizer.iterations.assign(7)

    averaging.average_checkpoints(manager.checkpoints, trainer)

    for averaged, a, b in zip(_weights(trainer), first, second, strict=True):
        np.testing.assert_allclose(averaged, (a + b) / 2, rtol=1e-6, atol=1e-6)
    assert trainer.step == 7, "averaging must touch the model weights only"


def test_averaging_refuses_no_or_missing_checkpoints(trainer, tmp_path):
    with pytest.raises(ValueError, match="No checkpoints to average"):
        averaging.average_checkpoints([], trainer)
    missing = str(tmp_path / "ckpt-5")
    with pytest.raises(FileNotFoundError, match=r"ckpt-5.index is missing"):
        averaging.average_checkpoints([missing], trainer)
