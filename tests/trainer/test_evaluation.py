"""Evaluation decodes length-sorted batches and returns hypotheses in split order; its loss
equals the split-order sum; a second evaluation reads and traces nothing."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from pipeline import config as config_lib
from pipeline import vocab as vocab_lib
from tests import dataset_fixture
from trainer import data, evaluation, state


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


def _randomize(model, seed: int = 0):
    """Large random weights: every sentence translates differently and the loss is far from
    uniform, so a misplaced or dropped pair shows."""
    rng = np.random.default_rng(seed)
    for variable in model.variables:
        variable.assign(rng.normal(0.0, 0.5, variable.shape).astype(np.float32))


def _split_order_loss(trainer, data_cfg, split: str) -> tuple[float, int]:
    """The reference: summed NLL over tokens, batch by batch in split order, eagerly."""
    total, tokens, pairs = 0.0, 0.0, 0
    for batch in data.make_eval_dataset(data_cfg, split):
        _, count, nll = trainer.task.loss(batch, tf.constant(0, tf.int64), training=False)
        total, tokens = total + float(nll), tokens + float(count)
        pairs += int(batch[data.SOURCE_LENGTHS].shape[0])
    return total / tokens, pairs


@pytest.mark.slow
def test_loss_is_the_split_order_loss_and_a_second_evaluation_reads_and_traces_nothing(
    small_dataset, tmp_path, monkeypatch
):
    """Length-sorted batches change only the order of the sums. Each evaluator function is
    traced once, whatever the batch shapes; the next evaluation reuses the kept pairs."""
    trainer = dataset_fixture.tiny_trainer(small_dataset.root, str(tmp_path))
    _randomize(trainer.model)
    # Batches of 8: five batch shapes, each traced anew by a function with a loose signature.
    data_cfg = dataclasses.replace(trainer.cfg.data, eval_batch_size=8)
    evaluator = evaluation.Evaluator(
        trainer.task, trainer.model, trainer.target_tokenizer, data_cfg
    )
    reads = []
    read_split = data.make_eval_dataset

    def counted_read(*args, **kwargs):
        reads.append(args)
        return read_split(*args, **kwargs)

    monkeypatch.setattr(data, "make_eval_dataset", counted_read)
    expected, pairs = _split_order_loss(trainer, data_cfg, "test")
    reads.clear()
    first = evaluator.loss("test")
    evaluator.quality("test", 16)
    assert first["loss"] == pytest.approx(expected, rel=1e-6)
    assert first["loss_pairs"] == pairs
    assert len(reads) == 1, "the loss read the split; decoding its first 16 reuses that"
    assert evaluator.traced_functions() == 2, "one loss and one beam-search trace"
    second = evaluator.loss("test")
    evaluator.quality("test", 16)
    assert second["loss"] == first["loss"]
    assert evaluator.traced_functions() == 2
    assert len(reads) == 1


def test_loss_batches_sort_by_length_and_keep_every_pair():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 20, size=(23, 2))
    pairs = evaluation.EvalPairs(
        sources=[rng.integers(4, 50, n).astype(np.int32) for n in lengths[:, 0]],
        targets_in=[rng.integers(4, 50, n).astype(np.int32) for n in lengths[:, 1]],
        targets_out=[rng.integers(4, 50, n).astype(np.int32) for n in lengths[:, 1]],
        source_texts=[""] * 23,
        target_texts=[""] * 23,
    )
    batches = evaluation.loss_batches(pairs, batch_size=5)
    assert [len(b[data.SOURCE_LENGTHS]) for b in batches] == [5, 5, 5, 5, 3]
    target_lengths = np.concatenate([b[data.TARGET_LENGTHS] for b in batches])
    assert list(target_lengths) == sorted(lengths[:, 1], reverse=True)
    seen = set()
    for batch in batches:
        assert batch[data.TARGET_IN].shape == batch[data.TARGET_OUT].shape
        assert batch[data.TARGET_IN].shape[1] == batch[data.TARGET_LENGTHS].max()
        assert batch[data.SOURCE_IDS].shape[1] == batch[data.SOURCE_LENGTHS].max()
        for row, n in zip(batch[data.SOURCE_IDS], batch[data.SOURCE_LENGTHS], strict=True):
            seen.add(tuple(row[:n]))
    assert seen == {tuple(row) for row in pairs.sources}
    assert len(pairs.first(7).sources) == 7 and pairs.first(-1) is pairs


@pytest.mark.slow
def test_tfa_fallback_decoding_traces_without_autograph(small_dataset, tmp_path):
    """Decoding skips AutoGraph: TFA's beam search (Bahdanau attention) and the Keras LSTM
    encoder must trace without it too."""
    cfg = config_lib.get_experiment("attention_seq2seq/tiny")
    overrides = {
        "data": {"data_dir": small_dataset.root},
        "model": {"attention": "bahdanau", "encoder_lstm": "keras"},
    }
    cfg = config_lib.validate(config_lib.merge(cfg, overrides, "test"))
    trainer = state.TrainState(cfg, str(tmp_path), tf.distribute.get_strategy())
    assert not trainer.model.uses_fused_decoder()
    evaluator = evaluation.Evaluator(
        trainer.task, trainer.model, trainer.target_tokenizer, trainer.cfg.data
    )
    result = evaluator.quality("test", 8)
    assert len(result["hypotheses"]) == 8
