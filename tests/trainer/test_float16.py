"""mixed_float16 with dynamic loss scaling trains: the loss falls and nothing overflows for good.

float16 is the GPU mixed precision; no GPU exists here, so this runs the same graph on the CPU
(slowly: XLA-free float16 kernels). The loss scale starts at 2**15 and halves on each step whose
scaled gradients overflow, skipping that update; the test checks that every skipped step is
such a halving, and that weights and losses stay finite while the loss falls.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from pipeline import config as config_lib
from trainer import train_loop

LOOPS, STEPS_PER_LOOP = 6, 5


@pytest.mark.slow
def test_mixed_float16_with_loss_scaling_trains(small_dataset, tmp_path):
    cfg = config_lib.build_config(
        "attention_seq2seq/tiny",
        params_override=f"data.data_dir={small_dataset.root},train.mixed_precision=mixed_float16",
    )
    tf.keras.utils.set_random_seed(0)
    try:
        trainer = train_loop.Trainer(cfg, str(tmp_path), tf.distribute.get_strategy())
        assert trainer.model.encoder.embedding.compute_dtype == "float16"
        optimizer = trainer.optimizer
        assert optimizer.dynamic and float(optimizer.initial_scale) == 2.0**15
        losses, skipped = [], 0.0
        for _ in range(LOOPS):
            totals = trainer.runner.run(STEPS_PER_LOOP)
            losses.append(float(totals["loss_sum"] / totals["tokens"]))
            skipped += float(totals["nonfinite"])
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    assert all(math.isfinite(loss) for loss in losses), losses
    assert losses[-1] < losses[0] - 0.3, f"the loss did not fall: {losses}"
    scale = float(optimizer.loss_scale)
    assert 1.0 <= scale <= 2.0**15
    assert skipped == math.log2(2.0**15 / scale), "every skipped step was a loss-scale overflow"
    assert trainer.step == LOOPS * STEPS_PER_LOOP
    for variable in trainer.model.trainable_variables:
        assert variable.dtype == tf.float32 and np.all(np.isfinite(variable.numpy())), variable.name
