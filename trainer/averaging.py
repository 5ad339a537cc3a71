"""Checkpoint averaging: the mean of the model weights of several checkpoints, for export.

Averaging the last few checkpoints of a run usually translates a little better than any one of
them. Only model weights are averaged; the optimizer, step and other training state are left as
they are, so the trainer still describes the checkpoint it was at.
"""

import numpy as np
import tensorflow as tf
from absl import logging


def average_checkpoints(checkpoint_paths: list[str], state) -> None:
    """Assigns the mean of the checkpoints' model weights to `state.model`.

    Each checkpoint is read into the live model through a checkpoint that tracks the model alone,
    so variables are matched by their object-graph names (`model/...`), exactly as a restore
    matches them, and optimizer slots in the files are ignored.

    Args:
      checkpoint_paths: checkpoint prefixes (e.g. `Trainer.saved_checkpoints()[-n:]`).
      state: a `state.TrainState` (or a trainer); its model's weights are replaced by the mean.

    Raises:
      ValueError: no paths were given.
      FileNotFoundError: a path is not a checkpoint prefix.
    """
    if not checkpoint_paths:
        raise ValueError("No checkpoints to average: pass at least one checkpoint prefix.")
    for path in checkpoint_paths:
        if not tf.io.gfile.exists(path + ".index"):
            raise FileNotFoundError(
                f"{path} is not a checkpoint ({path}.index is missing); pass prefixes such as "
                "model_dir/checkpoints/ckpt-1000, as listed in that directory's 'checkpoint' file."
            )
    variables = state.model.variables
    model_only = tf.train.Checkpoint(model=state.model)
    sums = [np.zeros(v.shape, np.float64) for v in variables]
    for path in checkpoint_paths:
        status = model_only.read(path)
        status.assert_existing_objects_matched()
        status.expect_partial()
        for total, variable in zip(sums, variables, strict=True):
            total += variable.numpy()
    for total, variable in zip(sums, variables, strict=True):
        variable.assign((total / len(checkpoint_paths)).astype(variable.dtype.as_numpy_dtype))
    logging.info(
        "Model weights are the mean of %d checkpoints: %s",
        len(checkpoint_paths),
        ", ".join(checkpoint_paths),
    )
