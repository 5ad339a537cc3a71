"""The trainer: builds one run's parts and drives them with a `controller.Controller`.

The parts, each in its own module:
  state.TrainState          model, optimizer and every checkpointed value
  checkpointing.Checkpointer  periodic saves, restore with fallback, best weights, config
  step_runner.StepRunner    sharded, positioned input and the replicated step loop
  evaluation.Evaluator      bounded dev loss, beam search spread over the replicas, BLEU
  controller.Controller     the loop: n steps, then the actions (train_log.TrainLog,
                            actions.NonFiniteGuard, actions.EvaluateAction,
                            actions.CheckpointAction), until done, out of time or preempted
"""

from pipeline import config as config_lib
from trainer import (
    actions,
    checkpointing,
    controller,
    distribution,
    evaluation,
    history,
    state,
    step_runner,
    train_log,
)

# What export, plots and the benchmarks read from a trainer: its state's model side.
_STATE_ATTRIBUTES = frozenset(
    {
        "model",
        "optimizer",
        "task",
        "checkpoint",
        "metadata",
        "source_tokens",
        "target_tokens",
        "source_tokenizer",
        "target_tokenizer",
        "best_bleu",
        "nonfinite_steps",
        "decoding_model",
        "export_model",
        "search_model",
        "step",
    }
)


class Trainer:
    """Trains one experiment in one model directory, resuming from its latest checkpoint."""

    def __init__(self, cfg: config_lib.ExperimentConfig, model_dir: str, strategy):
        # The global batch, XLA under TPUs and the encoder's LSTM follow from the strategy.
        cfg = distribution.for_strategy(cfg, strategy)
        self.cfg = cfg
        self.strategy = strategy
        self.is_chief = distribution.is_chief(strategy)
        self.state = state.TrainState(cfg, model_dir, strategy)
        self.layout = self.state.layout
        self.checkpoints = checkpointing.Checkpointer(
            self.state, strategy, cfg.train.keep_checkpoints
        )
        self.runner = step_runner.StepRunner(self.state, strategy)
        self.evaluator = evaluation.Evaluator(
            self.state.task,
            self.state.search_model(),
            self.state.target_tokenizer,
            cfg.data,
            strategy,
        )
        self.evaluation = actions.EvaluateAction(
            self.state, self.evaluator, self.checkpoints, cfg.train
        )
        # Whether the last `train` stopped for a preemption (on any worker).
        self.preempted = False

    def __getattr__(self, name):
        if name in _STATE_ATTRIBUTES:
            return getattr(self.state, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def train(self, stop_requested=lambda: False) -> dict:
        """Runs to `train.train_steps` (or the time budget), evaluating and checkpointing.

        Args:
          stop_requested: polled between loops; when true on any worker (e.g. after SIGTERM)
            every worker saves a checkpoint and returns, with `preempted` set.

        Returns:
          The last dev evaluation's results ({} if none ran).
        """
        train_cfg = self.cfg.train
        self.checkpoints.check_resumable(self.cfg)
        start_step = self.checkpoints.restore()
        if self.is_chief:
            history.truncate([self.layout.train_history, self.layout.eval_history], start_step)
        self.checkpoints.write_config(self.cfg)
        self.runner.restart_input()
        stop = controller.Controller(
            self.runner.run,
            lambda: self.state.step,
            self.strategy,
            train_cfg.train_steps,
            train_cfg.steps_per_loop,
            train_cfg.max_train_seconds,
            actions=[
                train_log.TrainLog(self.state, train_cfg, self.is_chief, start_step),
                actions.NonFiniteGuard(self.state, train_cfg.nonfinite),
                self.evaluation,
                actions.CheckpointAction(self.checkpoints, train_cfg.checkpoint_every),
            ],
            stop_requested=stop_requested,
        ).run()
        self.preempted = stop == controller.PREEMPTED
        return self.evaluation.last_result or {}

    def evaluate(self, split: str = "dev", limit: int = -1) -> dict:
        """Loss and BLEU on `split` now (see `actions.EvaluateAction.evaluate`)."""
        return self.evaluation.evaluate(split, limit)

    def restore_best(self) -> bool:
        return self.checkpoints.restore_best()

    def saved_checkpoints(self) -> list[str]:
        return self.checkpoints.saved()

    def cleanup(self):
        self.checkpoints.cleanup()
