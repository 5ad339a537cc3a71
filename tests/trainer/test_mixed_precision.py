"""Mixed-precision training translates with a float32 twin of the model, except where the fused
searches run.

Under `mixed_bfloat16` TFA's beam search would keep its scores in bfloat16 (the dtype of the
decoder state), so attention plots, export and TFA-decoded configs use `Trainer.decoding_model()`.
The fused searches keep states and scores in float32 and only multiply in bfloat16, so
evaluation during training runs them on the training model itself (`Trainer.search_model()`).
"""

import dataclasses
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from pipeline import config as config_lib
from tests import dataset_fixture
from trainer import data, export, precision, serving, train_loop

SOURCE_IDS = tf.constant([[5, 6, 7, 3], [8, 3, 0, 0]])
SOURCE_LENGTHS = tf.constant([4, 2])


def _mixed_cfg(data_dir, policy, **model_changes):
    """The tiny config on `data_dir` trained under `policy`, with `model_changes`."""
    changes = {
        "data": {"data_dir": data_dir},
        "train": {"mixed_precision": policy},
        "model": model_changes,
    }
    return config_lib.validate(
        config_lib.merge(config_lib.get_experiment("attention_seq2seq/tiny"), changes, "test")
    )


@pytest.fixture
def mixed_trainer(small_dataset, tmp_path):
    cfg = _mixed_cfg(small_dataset.root, "mixed_bfloat16")
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


def test_bfloat16_evaluation_searches_with_the_training_model(mixed_trainer):
    trained = mixed_trainer.model
    assert mixed_trainer.search_model() is trained
    assert mixed_trainer.evaluator.model is trained
    rng = np.random.default_rng(1)
    for variable in trained.trainable_variables:  # away from the near-uniform initial logits
        variable.assign_add(rng.normal(0, 0.3, variable.shape).astype(np.float32))
    ids, scores, _ = trained.beam_search(SOURCE_IDS, SOURCE_LENGTHS)
    twin_ids, twin_scores, _ = mixed_trainer.decoding_model().beam_search(
        SOURCE_IDS, SOURCE_LENGTHS
    )
    assert scores.dtype == tf.float32 and ids.shape[:2] == twin_ids.shape[:2]
    # bfloat16 products round each operand to 8 significant bits: the same search, close scores.
    np.testing.assert_allclose(scores.numpy(), twin_scores.numpy(), rtol=0.05)
    assert np.ptp(scores.numpy()) > 0.1  # the comparison is not between constants
    greedy_ids, greedy_lengths, _ = trained.greedy_decode(SOURCE_IDS, SOURCE_LENGTHS, 10)
    assert greedy_ids.dtype == tf.int32 and np.all(greedy_lengths.numpy() >= 1)


def test_float16_and_tfa_decoded_configs_search_with_the_float32_twin(small_dataset, tmp_path):
    for policy, layer_norm in (("mixed_float16", False), ("mixed_bfloat16", True)):
        cfg = _mixed_cfg(small_dataset.root, policy, layer_norm=layer_norm)
        try:
            trainer = train_loop.Trainer(cfg, str(tmp_path / policy), tf.distribute.get_strategy())
            assert trainer.search_model() is trainer.decoding_model() is not trainer.model
        finally:
            tf.keras.mixed_precision.set_global_policy("float32")


def test_evaluation_and_export_translate(mixed_trainer):
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


def _exported_scores(trainer, name: str, sentences: list[str]):
    """The best scores the SavedModel of `trainer`'s weights gives `sentences`."""
    export_dir = export.export_saved_model(trainer, str(trainer.layout.export) + name)
    with open(f"{export_dir}/{export.EXPORT_INFO}") as f:
        assert f'"precision": "{trainer.cfg.model.export_precision}"' in f.read()
    signature = tf.saved_model.load(export_dir).signatures[export.SERVING_SIGNATURE]
    return signature(sources=tf.constant(sentences))["scores"].numpy()


def test_a_bfloat16_export_searches_as_bfloat16_evaluation_does(small_dataset, tmp_path):
    """`model.export_precision=mixed_bfloat16`: the SavedModel of a bfloat16 run searches with
    the training model's bfloat16 products (its scores are evaluation's to the last bit), and a
    float32 run builds a bfloat16 twin with its weights. Both differ from float32 products."""
    sentences = ["Click OK.", "Select a cell in the table."]
    for policy in ("mixed_bfloat16", "float32"):
        cfg = _mixed_cfg(small_dataset.root, policy, export_precision="mixed_bfloat16")
        try:
            tf.keras.utils.set_random_seed(0)
            trainer = train_loop.Trainer(cfg, str(tmp_path / policy), tf.distribute.get_strategy())
            rng = np.random.default_rng(1)
            for variable in trainer.model.trainable_variables:
                variable.assign_add(rng.normal(0, 0.3, variable.shape).astype(np.float32))
            exported = trainer.export_model(precision.BFLOAT16)
            assert exported.attention_layer.compute_dtype == "bfloat16"
            assert (exported is trainer.model) == (policy == "mixed_bfloat16")
            for ours, theirs in zip(exported.variables, trainer.model.variables, strict=True):
                np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
            pieces = trainer.source_tokenizer.tokenize(tf.constant(sentences))
            # In a graph, as the SavedModel runs it (Grappler's fusions round bfloat16
            # differently from eager ops).
            _, expected, _ = tf.function(exported.beam_search)(*data.source_batch(pieces))
            scores = _exported_scores(trainer, "-bf16", sentences)
            np.testing.assert_array_equal(scores, expected.numpy()[:, 0])
            search = tf.function(trainer.decoding_model().beam_search)
            _, float32_scores, _ = search(*data.source_batch(pieces))
            assert not np.array_equal(scores, float32_scores.numpy()[:, 0])
        finally:
            tf.keras.mixed_precision.set_global_policy("float32")


def test_the_default_export_holds_a_float32_and_a_bfloat16_search(small_dataset, tmp_path):
    """`model.export_precision=auto` (the default): `serving_default` is the float32 export's
    search and `serving_bfloat16` the bfloat16 export's, to the last bit of their scores;
    the loader takes the one the host (or `products`) asks for, and the weights are saved once."""
    sentences = ["Click OK.", "Select a cell in the table.", "Open the file."]
    cfg = _mixed_cfg(small_dataset.root, "float32")
    assert cfg.model.export_precision == "auto"
    tf.keras.utils.set_random_seed(0)
    trainer = train_loop.Trainer(cfg, str(tmp_path), tf.distribute.get_strategy())
    rng = np.random.default_rng(1)
    for variable in trainer.model.trainable_variables:  # away from near-uniform logits
        variable.assign_add(rng.normal(0, 0.3, variable.shape).astype(np.float32))
    both = export.export_saved_model(trainer, str(tmp_path / "both"))
    signatures = tf.saved_model.load(both).signatures
    assert set(signatures) == {
        export.SERVING_SIGNATURE,
        export.BFLOAT16_SIGNATURE,
        export.LENGTHS_SIGNATURE,
    }
    for name, policy, products in (
        (export.SERVING_SIGNATURE, precision.FLOAT32, "float32"),
        (export.BFLOAT16_SIGNATURE, precision.BFLOAT16, "bfloat16"),
    ):
        alone = export.export_saved_model(trainer, str(tmp_path / policy), products=policy)
        expected = tf.saved_model.load(alone).signatures[export.SERVING_SIGNATURE]
        inputs = tf.constant(sentences)
        np.testing.assert_array_equal(
            signatures[name](sources=inputs)["scores"].numpy(),
            expected(sources=inputs)["scores"].numpy(),
        )
        translator = serving.load_translator(both, products=products)
        assert translator.products == products
        np.testing.assert_array_equal(
            translator.translate(sources=inputs)["scores"].numpy(),
            expected(sources=inputs)["scores"].numpy(),
        )
    with pytest.raises(serving.TranslationError, match="has no bfloat16 search"):
        serving.load_translator(str(tmp_path / precision.FLOAT32), products="bfloat16")
    # The bfloat16 twin searches over the model's own variables: the weights are saved once.
    assert _weight_bytes(both) < 1.01 * _weight_bytes(tmp_path / precision.FLOAT32)


def _weight_bytes(export_dir) -> int:
    return sum(f.stat().st_size for f in (pathlib.Path(export_dir) / "variables").iterdir())


def test_loaders_take_bfloat16_only_where_the_host_computes_it():
    """Pure: `serving.choose_signature` against host choices and exports of one or both
    searches (an export from before the bfloat16 signature names one policy)."""
    native = precision.choose("auto", "cpu", flags=frozenset({"avx512_bf16"}))
    emulated = precision.choose("auto", "cpu", flags=frozenset({"avx512f"}))
    ampere = precision.choose("auto", "gpu", gpu_capability=(8, 0))
    both = export.signature_precisions(_tiny_model_cfg())
    assert both == {"serving_default": "float32", "serving_bfloat16": "mixed_bfloat16"}
    choose = serving.choose_signature
    assert choose(both, "auto", native) == ("serving_bfloat16", "bfloat16")
    assert choose(both, "auto", ampere) == ("serving_bfloat16", "bfloat16")
    assert choose(both, "auto", emulated) == ("serving_default", "float32")
    assert choose(both, "float32", native) == ("serving_default", "float32")
    assert choose(both, "bfloat16", emulated) == ("serving_bfloat16", "bfloat16")
    only_bfloat16 = {"serving_default": "mixed_bfloat16"}
    assert choose(only_bfloat16, "auto", emulated) == ("serving_default", "bfloat16")
    with pytest.raises(serving.TranslationError, match="no float32 search"):
        choose(only_bfloat16, "float32", native)
    tfa_decoded = dataclasses.replace(_tiny_model_cfg(), layer_norm=True)
    assert export.signature_precisions(tfa_decoded) == {"serving_default": "float32"}


def _tiny_model_cfg():
    return config_lib.get_experiment("attention_seq2seq/tiny").model


def test_a_bfloat16_export_of_a_tfa_decoded_model_is_a_config_error(small_dataset, tmp_path):
    cfg = _mixed_cfg(
        small_dataset.root, "mixed_bfloat16", export_precision="mixed_bfloat16", layer_norm=True
    )
    try:
        with pytest.raises(config_lib.ConfigError, match="model.export_precision"):
            train_loop.Trainer(cfg, str(tmp_path), tf.distribute.get_strategy())
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
