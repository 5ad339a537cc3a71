"""Evaluation decodes length-sorted batches and returns hypotheses in split order."""

import numpy as np
import pytest
import tensorflow as tf

from pipeline import vocab as vocab_lib
from tests import dataset_fixture
from trainer import data, evaluation


def test_length_sorted_batches_group_similar_lengths_and_keep_the_way_back():
    rng = np.random.default_rng(0)
    rows = [rng.integers(4, 50, size=n).astype(np.int32) for n in rng.integers(1, 30, size=23)]
    order, batches = evaluation.length_sorted_batches(rows, batch_size=5)
    assert sorted(order) == list(range(len(rows)))
    assert [len(ids) for ids, _ in batches] == [5, 5, 5, 5, 3]
    flat = []
    for ids, lengths in batches:
        assert ids.shape[1] == lengths.max(), "each batch is padded to its own longest row"
        flat += [row[:n] for row, n in zip(ids, lengths, strict=True)]
        assert np.all(ids[np.arange(ids.shape[1]) >= lengths[:, None]] == vocab_lib.PAD_ID)
    assert [len(row) for row in flat] == sorted((len(row) for row in rows), reverse=True)
    for position, index in enumerate(order):
        np.testing.assert_array_equal(flat[position], rows[index])


@pytest.mark.slow
def test_translations_come_back_in_split_order(small_dataset, tmp_path):
    """Each hypothesis is the same sentence decoded alone, with weights large enough that every
    sentence translates differently (so a hypothesis in the wrong place shows)."""
    trainer = dataset_fixture.tiny_trainer(small_dataset.root, str(tmp_path))
    rng = np.random.default_rng(0)
    for variable in trainer.model.variables:
        variable.assign(rng.normal(0.0, 0.5, variable.shape).astype(np.float32))
    evaluator = evaluation.Evaluator(
        trainer.task, trainer.model, trainer.target_tokenizer, trainer.cfg.data
    )
    sources, hypotheses, _ = evaluator.translate_split("test", 24)
    assert len(set(hypotheses)) > 12
    rows = []
    for batch in data.make_eval_dataset(trainer.cfg.data, "test", 24):
        ids, lengths = batch[data.SOURCE_IDS].numpy(), batch[data.SOURCE_LENGTHS].numpy()
        rows += [(row[:n][None], n[None]) for row, n in zip(ids, lengths, strict=True)]
    alone = [evaluator._beam_fn(ids, lengths).numpy()[0] for ids, lengths in rows]
    pieces = [evaluation.strip_after_eos(row) for row in alone]
    texts = trainer.target_tokenizer.detokenize(tf.ragged.constant(pieces, dtype=tf.int32)).numpy()
    alone_texts = [t.decode("utf-8") for t in texts]
    # Float sums differ slightly with the batch a sentence shares, and random weights leave
    # near-ties, so a rare hypothesis may differ; a misplaced one would make most differ.
    same = sum(a == b for a, b in zip(hypotheses, alone_texts, strict=True))
    assert same >= 0.9 * len(hypotheses), f"{same} of {len(hypotheses)} in place"
    assert len(sources) == len(rows)
