"""The training log action: one console line, one `train_history.jsonl` record and TensorBoard
scalars per loop (loss, perplexity, learning rate, gradient norm, sampling probability, speed,
time left). The chief writes the files; every worker logs to its console.
"""

import math
import time

import tensorflow as tf
from absl import logging

from pipeline import config as config_lib
from pipeline import console
from trainer import controller, history


class TrainLog:
    """Logs each `controller.LoopOutput` of a run that started at `start_step`."""

    def __init__(self, state, train_cfg: config_lib.TrainConfig, is_chief: bool, start_step: int):
        self.state = state
        self.train_cfg = train_cfg
        self.is_chief = is_chief
        self.start_step = start_step
        self.started = time.time()
        self.writer = history.summary_writer(state.layout, "train", is_chief)

    def __call__(self, output: controller.LoopOutput):
        record = self._record(output)
        logging.info(
            "step %d/%d loss %.3f ppl %.1f lr %.2e |g| %.2f p_sample %.3f %.1f steps/s "
            "%.0f tok/s, %s left",
            output.step,
            self.train_cfg.train_steps,
            record["loss"],
            record["perplexity"],
            record["learning_rate"],
            record["grad_norm"],
            record["sampling_probability"],
            record["steps_per_second"],
            record["tokens_per_second"],
            console.duration(self._eta(output.step)),
        )
        if self.is_chief:
            history.append(self.state.layout.train_history, record)
            with self.writer.as_default(step=output.step):
                for key, value in record.items():
                    if key != "step":
                        tf.summary.scalar(key, value)

    def _record(self, output: controller.LoopOutput) -> dict:
        metrics = output.metrics
        tokens = max(metrics["tokens"], 1.0)
        seconds = max(output.seconds, 1e-9)
        optimizer = self.state.optimizer
        return {
            "step": output.step,
            "loss": round(metrics["loss_sum"] / tokens, 4),
            "perplexity": round(math.exp(min(metrics["nll_sum"] / tokens, 50.0)), 2),
            "learning_rate": float(tf.keras.backend.get_value(optimizer.learning_rate)),
            "grad_norm": round(metrics["grad_norm"] / output.steps, 3),
            # The schedule is a function of the step: the probability the last step used.
            "sampling_probability": round(
                float(self.state.task.sampling_probability(output.step - 1)), 4
            ),
            "steps_per_second": round(output.steps / seconds, 2),
            "tokens_per_second": round((metrics["tokens"] + metrics["source_tokens"]) / seconds, 1),
        }

    def _eta(self, step: int) -> float:
        """Seconds left at this run's mean speed, capped by the time budget."""
        elapsed = time.time() - self.started
        eta = elapsed / max(step - self.start_step, 1) * (self.train_cfg.train_steps - step)
        if self.train_cfg.max_train_seconds:
            eta = min(eta, max(self.train_cfg.max_train_seconds - elapsed, 0.0))
        return eta
