"""Runs training steps: the positioned, sharded input and the replicated step loop.

This is the part of the trainer that touches the accelerators: `run(n)` executes `n` steps of
`TranslationTask.train_step` under `strategy.run` inside one `tf.function` and returns summed
metrics. It keeps the state's input-position table current, so any checkpoint taken between
calls resumes the input right after the last batch trained on.
"""

import numpy as np
import tensorflow as tf
from absl import logging

from trainer import data, input_position

METRICS = ("loss_sum", "nll_sum", "tokens", "source_tokens", "grad_norm", "nonfinite")
# Summed over replicas, each metric is a total, except "nonfinite": replicas agree on whether
# a step was finite (they share the all-reduced gradient), so it is capped at one per step.
_CAPS = np.array([np.inf] * (len(METRICS) - 1) + [1.0], np.float32)


class StepRunner:
    """Trains a `state.TrainState` under `strategy`, `num_steps` at a time."""

    def __init__(self, state, strategy: tf.distribute.Strategy):
        self.state = state
        self.strategy = strategy
        self.cfg = state.cfg
        self._iterator = None
        self._loop = None

    def restart_input(self):
        """Forgets the input iterator: the next `run` positions it from the state (restored)."""
        self._iterator = None

    def run(self, num_steps: int) -> dict[str, float]:
        """Trains `num_steps` steps; returns the metrics summed over steps and replicas."""
        if self._iterator is None:
            self._iterator = iter(self.distributed_dataset())
        if self._loop is None:
            self._loop = self._make_loop()
        totals = self._loop(self._iterator, tf.constant(num_steps))
        return dict(zip(METRICS, (float(v) for v in totals.numpy()), strict=True))

    def distributed_dataset(self) -> tf.distribute.DistributedDataset:
        """The training input, each pipeline resuming after its batch in the state's table."""
        table = self.state.input_positions.numpy()
        step = self.state.step
        cfg = self.cfg
        static = isinstance(self.strategy, tf.distribute.TPUStrategy)

        train_pairs = self.state.metadata["counts"]["written"]["train"]

        def pipeline_input(context):
            if train_pairs < context.num_input_pipelines:
                raise ValueError(
                    f"The train split has {train_pairs} pairs, fewer than the "
                    f"{context.num_input_pipelines} input pipelines (workers) that share it."
                )
            resume_after = input_position.resume_position(table, context, step)
            logging.info(
                "Input pipeline %d of %d at step %d: resuming after %s.",
                context.input_pipeline_id + 1,
                context.num_input_pipelines,
                step,
                resume_after,
            )
            return data.make_train_dataset(
                cfg.data,
                cfg.train.seed,
                context,
                static,
                resume_after,
                pad_to_buckets=cfg.train.jit_compile,
            )

        return self.strategy.distribute_datasets_from_function(pipeline_input)

    def _make_loop(self):
        state, strategy = self.state, self.strategy
        step_fn = state.task.train_step
        if self.cfg.train.jit_compile:
            step_fn = tf.function(step_fn, jit_compile=True)

        def replica_step(batch, step):
            batch = dict(batch)
            position = batch.pop(data.INPUT_POSITION)
            metrics = step_fn(batch, step)
            return tf.stack([metrics[name] for name in METRICS]), position[None]

        @tf.function
        def loop(iterator, num_steps):
            totals = tf.zeros([len(METRICS)])
            for _ in tf.range(num_steps):
                step = state.optimizer.iterations
                metrics, positions = strategy.run(replica_step, args=(next(iterator), step))
                metrics = strategy.reduce(tf.distribute.ReduceOp.SUM, metrics, axis=None)
                totals += tf.minimum(metrics, _CAPS)
                state.input_positions.assign(strategy.gather(positions, axis=0))
            return totals

        return loop
