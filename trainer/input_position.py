"""Where each input pipeline stands in its training stream, saved in every checkpoint.

Every training batch carries the position it came from as one int64 vector (`FIELDS`):
the pipeline that made it, the epoch and record index at which its sort pool (or, when batches
are bucketed, its epoch) starts, the pool's number, and the batch's place in that pool (or
epoch). The training loop gathers the positions of the last batch of every replica into a
checkpointed table; a restart rebuilds each pipeline's stream from its row in constant time
(`records.PipelineShare.stream`) instead of replaying every batch consumed so far.
"""

import collections

import numpy as np
import tensorflow as tf
from absl import logging

FIELDS = ("pipeline", "epoch", "record", "pool", "batch")
SIZE = len(FIELDS)


class InputPosition(collections.namedtuple("InputPosition", FIELDS)):
    """A batch's origin; a restart resumes right after the batch at this position.

    Fields:
      pipeline: the input pipeline (worker) that made the batch.
      epoch: the epoch holding the first record of the batch's pool (bucketed input: the
        batch's epoch).
      record: index of that record in its epoch's order (bucketed input: 0).
      pool: the pool's number counted from the start of training (bucketed input: 0).
      batch: the batch's place among its pool's batches (bucketed input: in its epoch).
    """

    @classmethod
    def start(cls, pipeline: int = 0) -> "InputPosition":
        """Before the first batch of training."""
        return cls(pipeline, 0, 0, 0, -1)


def empty_table() -> tf.Tensor:
    """The table before any step: no replica has consumed a batch."""
    return tf.zeros([0, SIZE], tf.int64)


def resume_position(
    table: np.ndarray, context: tf.distribute.InputContext | None, step: int
) -> InputPosition:
    """The position a pipeline resumes after, read from the checkpointed table.

    Args:
      table: [replicas, SIZE] positions of the last batch each replica consumed (may be empty).
      context: this pipeline's input context (None: the only pipeline).
      step: the step being resumed, which numbers the pools of a restarted layout.

    Returns:
      This pipeline's row when the table was written by as many pipelines as there are now.
      Otherwise (the run moved to another number of workers) the start of the epoch after the
      latest saved one, for every pipeline alike: no record is repeated within an epoch, but
      the run is no longer identical to one that kept its worker count.
    """
    pipelines = context.num_input_pipelines if context else 1
    pipeline = context.input_pipeline_id if context else 0
    if table.size == 0:
        return InputPosition.start(pipeline)
    saved_pipelines = int(table[:, 0].max()) + 1
    if saved_pipelines == pipelines:
        row = table[table[:, 0] == pipeline][0]
        return InputPosition(*(int(value) for value in row))
    next_epoch = int(table[:, 1].max()) + 1
    logging.warning(
        "The checkpoint's input positions were written by %d input pipelines (workers) and "
        "this run has %d: the input restarts at epoch %d for every pipeline. Training goes on "
        "from the checkpoint's weights, but not identically to a run that kept %d workers.",
        saved_pipelines,
        pipelines,
        next_epoch,
        saved_pipelines,
    )
    return InputPosition(pipeline, next_epoch, 0, step, -1)
