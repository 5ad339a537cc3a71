"""What happens between training loops, as `controller.Controller` actions.

Each action receives every `controller.LoopOutput`, decides whether it is due, and takes only
what it needs (the state, the checkpointer, the evaluator), never the whole trainer.
"""

import time

import tensorflow as tf
from absl import logging

from pipeline import config as config_lib
from trainer import controller, distribution, history, plots


class NonFiniteLossError(RuntimeError):
    """train.nonfinite=stop and a step produced a NaN/Inf loss or gradient."""


class NonFiniteGuard:
    """Counts steps whose update was skipped for a NaN/Inf, and stops the run if so configured.

    Runs before `CheckpointAction`, so with `train.nonfinite=stop` the run ends on the last
    checkpoint, which holds finite weights (skipped updates never change them anyway).
    """

    def __init__(self, state, policy: str):
        self.state = state
        self.policy = policy

    def __call__(self, output: controller.LoopOutput):
        count = output.metrics["nonfinite"]
        if count <= 0:
            return
        self.state.nonfinite_steps.assign_add(count)
        logging.warning(
            "%d step(s) before step %d had a NaN/Inf loss or gradient; their updates were "
            "skipped (%d in this run so far).",
            count,
            output.step,
            float(self.state.nonfinite_steps.numpy()),
        )
        if self.policy == "stop":
            raise NonFiniteLossError(
                f"Non-finite loss or gradient before step {output.step} and "
                f"train.nonfinite=stop; the last checkpoint in "
                f"{self.state.layout.checkpoints} holds finite weights."
            )


class CheckpointAction:
    """Saves every `every` steps and whenever training stops (preemption included)."""

    def __init__(self, checkpointer, every: int):
        self.checkpointer = checkpointer
        self.every = every

    def __call__(self, output: controller.LoopOutput):
        if output.step % self.every < output.steps or output.stop:
            self.checkpointer.save()


class EvaluateAction:
    """Dev loss and BLEU every `train.eval_every` steps and at the end; keeps the best weights.

    Runs before `CheckpointAction` in a loop, so the checkpoint at an evaluated step holds the
    best dev BLEU it produced (a resume then never overwrites a better best checkpoint).
    Not run on preemption: the job is about to be killed.

    When training ends it logs what the dev evaluations cost: their wall time and its share of
    the training time (from the first step to the end of the final evaluation).

    Attributes:
      last_result: the latest evaluation's results (None before the first).
      dev_seconds: wall time of this run's dev evaluations during training.
      dev_evaluations: how many ran.
    """

    def __init__(self, state, evaluator, checkpointer, train_cfg: config_lib.TrainConfig):
        self.state = state
        self.evaluator = evaluator
        self.checkpointer = checkpointer
        self.train_cfg = train_cfg
        self.last_result = None
        self.dev_seconds = 0.0
        self.dev_evaluations = 0

    def __call__(self, output: controller.LoopOutput):
        due = output.step % self.train_cfg.eval_every < output.steps
        final = output.stop in (controller.DONE, controller.BUDGET)
        if not (final or (due and not output.stop)):
            return
        started = time.time()
        self.last_result = self.evaluate("dev", self.train_cfg.eval_sentences)
        self.dev_seconds += time.time() - started
        self.dev_evaluations += 1
        if final:
            self._log_share(output.elapsed + (time.time() - started))

    def _log_share(self, training_seconds: float):
        logging.info(
            "Dev evaluation: %.1f s in %d evaluation(s) = %.1f%% of %.0f s of training "
            "(first step to the end of the final evaluation).",
            self.dev_seconds,
            self.dev_evaluations,
            100.0 * self.dev_seconds / max(training_seconds, 1e-9),
            training_seconds,
        )

    def evaluate(self, split: str = "dev", limit: int = -1) -> dict:
        """Loss on the first `train.eval_loss_sentences` pairs of `split`, BLEU/chrF on beam
        search of its first `limit` (-1: all); logged, and written by the chief."""
        with distribution.evaluation_scope(self.evaluator.strategy):  # TPU: on the host CPU
            return self._evaluate(split, limit)

    def _evaluate(self, split: str, limit: int) -> dict:
        started = time.time()
        step = self.state.step
        result = {"step": step, "split": split}
        loss_limit = self.train_cfg.eval_loss_sentences
        # One read of the split serves both halves (the evaluator keeps it for the next time).
        self.evaluator.pairs(split, -1 if min(loss_limit, limit) < 0 else max(loss_limit, limit))
        result["read_seconds"] = round(time.time() - started, 2)
        result.update(self.evaluator.loss(split, loss_limit))
        # The evaluator decodes with this model: where it is the float32 twin, the call copies
        # the current weights into it, so it must come before `quality`.
        self.state.search_model()
        result.update(self.evaluator.quality(split, limit))
        result["seconds"] = round(time.time() - started, 1)
        logging.info(
            "eval %s step %d: loss %.3f ppl %.1f BLEU %.2f chrF %.2f in %.1f s (loss over %d "
            "pairs in %.1f s; %d sentences decoded in %.1f s, %.1f/s, on %d replica(s))",
            split,
            step,
            result["loss"],
            result["perplexity"],
            result["bleu"],
            result["chrf"],
            result["seconds"],
            result["loss_pairs"],
            result["loss_seconds"],
            result["sentences"],
            result["decode_seconds"],
            result["sentences"] / max(result["decode_seconds"], 1e-9),
            result["decode_replicas"],
        )
        if self.checkpointer.is_chief:
            self._write(result)
        if split == "dev" and result["bleu"] > float(self.state.best_bleu.numpy()):
            self.state.best_bleu.assign(result["bleu"])
            self.checkpointer.save_best()
        return result

    def _write(self, result: dict):
        """History record, TensorBoard scalars and (dev) attention images (drawn by the float32
        `decoding_model`, current weights)."""
        state, split = self.state, result["split"]
        history.append(
            state.layout.eval_history, {k: v for k, v in result.items() if k != "hypotheses"}
        )
        writer = history.summary_writer(state.layout, split, is_chief=True)
        with writer.as_default(step=result["step"]):
            for key in ("loss", "perplexity", "bleu", "chrf"):
                tf.summary.scalar(key, result[key])
            if split == "dev":
                sources = [sample["source"] for sample in result["samples"][:2]]
                plots.write_attention_summaries(
                    state.decoding_model(),
                    state.source_tokenizer,
                    state.target_tokenizer,
                    sources,
                    result["step"],
                )
