"""Mixed-precision training translates with a float32 twin of the model.

Under `mixed_bfloat16` TFA's beam search would keep its scores in bfloat16 (the dtype of the
decoder state), so evaluation, attention plots and export use `Trainer.decoding_model()`.
"""

import numpy as np
import pytest
import tensorflow as tf

from pipeline import config as config_lib
from tests import dataset_fixture
from trainer import export, train_loop

SOURCE_IDS = tf.constant([[5, 6, 7, 3], [8, 3, 0, 0]])
SOURCE_LENGTHS = tf.constant([4, 2])


@pytest.fixture
def mixed_trainer(small_dataset, tmp_path):
    cfg = config_lib.get_experiment("attention_seq2seq/tiny")
    changes = {
        "data": {"data_dir": small_dataset.root},
        "train": {"mixed_precision": "mixed_bfloat16"},
    }
    cfg = config_lib.validate(config_lib.merge(cfg, changes, "test"))
    tf.keras.utils.set_random_seed(0)
    try:
        yield train_loop.Trainer(cfg, str(tmp_path), tf.distribute.get_strategy())
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")


def test_decoding_model_is_float32_with_the_current_weights(mixed_trainer):
    trained = mixed_trainer.model
    cfg = trained.cfg
    options = (cfg.beam_width, cfg.length_penalty, cfg.coverage_penalty, cfg.max_decode_length)
    _, low_scores, _ = trained.tfa_beam_search(SOURCE_IDS, SOURCE_LENGTHS, *options)
    assert low_scores.dtype == tf.bfloat16  # what the twin is for (TFA's decoders)
    _, fused_scores, _ = trained.beam_search(SOURCE_IDS, SOURCE_LENGTHS)
    assert fused_scores.dtype == tf.float32  # `beam_search` keeps its scores in float32
    rng = np.random.default_rng(0)
    for variable in trained.trainable_variables:  # weights a training step would have moved
        variable.assign_add(rng.normal(0, 0.1, variable.shape).astype(np.float32))

    decoding = mixed_trainer.decoding_model()

    assert decoding is not trained
    for ours, theirs in zip(decoding.variables, trained.variables, strict=True):
        assert ours.dtype == tf.float32
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy(), err_msg=ours.name)
    ids, scores, _ = decoding.beam_search(SOURCE_IDS, SOURCE_LENGTHS)
    assert scores.dtype == tf.float32 and ids.shape[:2] == (2, trained.cfg.beam_width)


def test_evaluation_and_export_translate_in_float32(mixed_trainer):
    result = mixed_trainer.evaluate("dev", limit=4)
    assert result["sentences"] == 4 and np.isfinite(result["loss"])
    export_dir = export.export_saved_model(mixed_trainer, mixed_trainer.layout.export)
    serving = tf.saved_model.load(export_dir).signatures[export.SERVING_SIGNATURE]
    assert serving.structured_outputs["scores"].dtype == tf.float32
    outputs = serving(sources=tf.constant(["Click OK."]))
    assert outputs["translations"].shape == (1,)


def test_float32_training_decodes_with_the_model_itself(small_dataset, tmp_path):
    trainer = dataset_fixture.tiny_trainer(small_dataset.root, str(tmp_path))
    assert trainer.decoding_model() is trainer.model
