"""Issue #6 acceptance: short training -> export -> a fresh process translates exactly like the
in-process beam search of the exported checkpoint.

The dataset is the session's small real dataset in the Beam output layout and the run its shared
`trained_tiny_run` (tests/conftest.py); the preprocess job's own end-to-end test covers
corpus -> dataset.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import yaml

from pipeline import config as config_lib
from pipeline import paths, text
from trainer import data, evaluation, export, train_loop

pytestmark = pytest.mark.slow

SENTENCES = ["Click OK.", "Select a cell in the table.", "446 Named argument not found"]

# Runs with the interpreter's isolated mode from an empty directory: TF and TF Text only.
_FRESH_PROCESS = """
import json, sys
import tensorflow as tf, tensorflow_text
assert 'trainer' not in sys.modules and 'pipeline' not in sys.modules
signature = tf.saved_model.load(sys.argv[1]).signatures['serving_default']
out = signature(sources=tf.constant(json.loads(sys.argv[2])))
print(json.dumps({
    'translations': [t.decode('utf-8') for t in out['translations'].numpy()],
    'nbest': [[t.decode('utf-8') for t in row] for row in out['nbest'].numpy()],
    'scores': out['scores'].numpy().tolist(),
}))
"""


@pytest.fixture(scope="module")
def run_dir(trained_tiny_run):
    model_dir, _ = trained_tiny_run
    return model_dir


def _served(export_dir, sentences, cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-I", "-c", _FRESH_PROCESS, export_dir, json.dumps(sentences)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def _in_process(trainer, sentences, decode_options):
    """Beam search of the live model, with the export's input preparation and decode options."""
    normalized = tf.constant([text.normalize(s) for s in sentences])
    pieces = trainer.source_tokenizer.tokenize(normalized)[:, : trainer.cfg.data.max_length]
    source_ids, source_lengths = data.source_batch(pieces)
    ids, scores, _ = trainer.model.beam_search(source_ids, source_lengths, **decode_options)
    beams = ids.shape[1]
    hypotheses = [evaluation.strip_after_eos(row) for row in ids.numpy().reshape(-1, ids.shape[2])]
    strings = trainer.target_tokenizer.detokenize(tf.ragged.constant(hypotheses, dtype=tf.int32))
    nbest = [s.decode("utf-8") for s in strings.numpy()]
    nbest = [nbest[i : i + beams] for i in range(0, len(nbest), beams)]
    return {
        "translations": [row[0] for row in nbest],
        "nbest": nbest,
        "scores": scores[:, 0].numpy().tolist(),
    }


def _best_trainer(run_dir):
    with open(paths.RunLayout(run_dir).config) as f:
        cfg = config_lib.from_dict(yaml.safe_load(f))
    trainer = train_loop.Trainer(cfg, run_dir, tf.distribute.get_strategy())
    assert trainer.restore_best(), "the run kept no best checkpoint"
    return trainer


def test_fresh_process_translates_like_in_process_beam_search_of_the_checkpoint(run_dir, tmp_path):
    layout = paths.RunLayout(run_dir)
    with open(os.path.join(layout.export, "export_info.json")) as f:
        info = json.load(f)
    served = _served(layout.export, SENTENCES, cwd=tmp_path)

    trainer = _best_trainer(run_dir)
    assert trainer.step == info["step"], "the export is not the best checkpoint"
    live = _in_process(trainer, SENTENCES, info["decode_options"])

    assert served["translations"] == live["translations"]
    assert served["nbest"] == live["nbest"]
    np.testing.assert_allclose(served["scores"], live["scores"], rtol=1e-5, atol=1e-5)
    # Scores depend on the input: the comparison is not between constant outputs.
    assert len(set(np.round(live["scores"], 4))) == len(SENTENCES)


def test_a_width_one_export_serves_greedy_search(run_dir, tmp_path):
    """Width 1 exports the greedy loop (not beam search): a fresh process gives the live model's
    greedy translations and scores."""
    trainer = _best_trainer(run_dir)
    export_dir = export.export_saved_model(
        trainer, str(tmp_path / "greedy"), beam_width=1, coverage_penalty=0.0
    )
    with open(os.path.join(export_dir, "export_info.json")) as f:
        options = json.load(f)["decode_options"]
    assert options["beam_width"] == 1 and options["length_penalty"] > 0
    served = _served(export_dir, SENTENCES, cwd=tmp_path)
    live = _in_process(trainer, SENTENCES, options)

    assert served["translations"] == live["translations"]
    assert [len(row) for row in served["nbest"]] == [1] * len(SENTENCES)
    np.testing.assert_allclose(served["scores"], live["scores"], rtol=1e-5, atol=1e-5)
    assert len(set(np.round(live["scores"], 4))) == len(SENTENCES)
