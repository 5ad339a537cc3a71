"""Trains the tiny config on a small real dataset, exports it and reloads it in a fresh process.

The run is the session's `trained_tiny_run` (tests/conftest.py), shared with the export and
console tests."""

import json
import os
import re
import subprocess
import sys

import pytest

from tests import dataset_fixture

pytestmark = pytest.mark.slow


def test_training_writes_histories_checkpoints_and_test_scores(trained_tiny_run):
    model_dir, log = trained_tiny_run
    with open(os.path.join(model_dir, "train_history.jsonl")) as f:
        history = [json.loads(line) for line in f]
    assert [h["step"] for h in history] == list(range(5, dataset_fixture.TRAINED_RUN_STEPS + 1, 5))
    assert history[-1]["loss"] < history[0]["loss"]
    assert all(0.0 < h["sampling_probability"] <= 0.25 for h in history)
    with open(os.path.join(model_dir, "test_results.json")) as f:
        test = json.load(f)
    assert test["split"] == "test" and test["sentences"] > 0
    assert test["bleu_signature"].startswith("nrefs:1")
    assert os.path.exists(os.path.join(model_dir, "config.yaml"))
    assert "eval dev step 20" in log and f"eval dev step {dataset_fixture.TRAINED_RUN_STEPS}" in log
    assert re.search(r"Dev evaluation: [\d.]+ s in 2 evaluation\(s\) = [\d.]+% of \d+ s", log)


def test_exported_model_translates_in_a_fresh_process_without_the_project(
    trained_tiny_run, tmp_path
):
    """The reloading process runs from an empty directory and imports only TF and TF Text."""
    model_dir, _ = trained_tiny_run
    script = (
        "import sys, tensorflow as tf, tensorflow_text\n"
        "assert 'trainer' not in sys.modules and 'pipeline' not in sys.modules\n"
        "sig = tf.saved_model.load(sys.argv[1]).signatures['serving_default']\n"
        "out = sig(sources=tf.constant(['Click OK.', 'Select a cell.']))\n"
        "print(out['translations'].shape[0], out['nbest'].shape[1], out['scores'].dtype.name)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-I", "-c", script, os.path.join(model_dir, "export")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["2", "2", "float32"]
