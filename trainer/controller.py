"""The loop driver: train `steps_per_loop` steps, decide whether to stop, run the actions.

Like Orbit's `Controller`, it knows nothing about checkpoints, evaluation or logging: those are
actions, callables that receive a `LoopOutput` after every loop and decide for themselves
whether it is their turn. Stopping is agreed by all workers, so every worker runs the same
actions at the same step (several of them are collective operations).
"""

import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import tensorflow as tf
from absl import logging

# Why the loop ended after this output ("" while it goes on).
DONE = "done"  # train.train_steps reached
BUDGET = "budget"  # train.max_train_seconds spent
PREEMPTED = "preempted"  # a stop was requested (SIGTERM): save and leave, nothing more
_STOP_MESSAGES = {
    DONE: "Reached step %d: final evaluation and checkpoint.",
    BUDGET: "Time budget spent at step %d: final evaluation and checkpoint, then stopping.",
    PREEMPTED: "Stop requested at step %d: saving and stopping.",
}


class LoopOutput(NamedTuple):
    """What one loop of training produced.

    Attributes:
      step: the step reached at the end of the loop.
      steps: steps run in the loop.
      seconds: wall time of the loop.
      elapsed: wall time since training started (in this process), the loop included.
      metrics: `step_runner.METRICS` summed over the loop's steps and replicas.
      stop: why training stops after this loop (DONE, BUDGET, PREEMPTED), or "".
    """

    step: int
    steps: int
    seconds: float
    elapsed: float
    metrics: dict
    stop: str


Action = Callable[[LoopOutput], None]


class Controller:
    """Runs training to `train_steps`, calling `actions` in order after each loop.

    Args:
      run_steps: trains n steps and returns their summed metrics (`StepRunner.run`).
      current_step: returns the step training is at.
      strategy: the distribution strategy, through which workers agree on stopping.
      train_steps: the step to train to.
      steps_per_loop: steps between two rounds of actions.
      max_train_seconds: wall-time budget from `run` (0: none).
      actions: called with each `LoopOutput`, in order.
      stop_requested: polled after each loop; true stops training (e.g. after SIGTERM).
    """

    def __init__(
        self,
        run_steps: Callable[[int], dict],
        current_step: Callable[[], int],
        strategy: tf.distribute.Strategy,
        train_steps: int,
        steps_per_loop: int,
        max_train_seconds: float,
        actions: Sequence[Action],
        stop_requested: Callable[[], bool] = lambda: False,
    ):
        self.run_steps = run_steps
        self.current_step = current_step
        self.strategy = strategy
        self.train_steps = train_steps
        self.steps_per_loop = steps_per_loop
        self.max_train_seconds = max_train_seconds
        self.actions = list(actions)
        self.stop_requested = stop_requested

    def run(self) -> str:
        """Trains until a stop; returns why (DONE, BUDGET, PREEMPTED; DONE if already done)."""
        started = time.time()
        while self.current_step() < self.train_steps:
            steps = min(self.steps_per_loop, self.train_steps - self.current_step())
            loop_started = time.time()
            metrics = self.run_steps(steps)
            seconds = time.time() - loop_started
            output = LoopOutput(
                self.current_step(),
                steps,
                seconds,
                time.time() - started,
                metrics,
                self._stop(started),
            )
            if output.stop:
                logging.info(_STOP_MESSAGES[output.stop], output.step)
            for action in self.actions:
                action(output)
            if output.stop:
                return output.stop
        return DONE

    def _stop(self, started: float) -> str:
        budget_spent = bool(self.max_train_seconds) and (
            time.time() - started > self.max_train_seconds
        )
        preempted, budget_spent = _any_worker(self.strategy, [self.stop_requested(), budget_spent])
        if preempted:
            return PREEMPTED
        if self.current_step() >= self.train_steps:
            return DONE
        return BUDGET if budget_spent else ""


def _any_worker(strategy: tf.distribute.Strategy, flags: list[bool]) -> list[bool]:
    """Each flag is true if it is true on any worker, so all workers take the same branch."""
    if not strategy.extended._in_multi_worker_mode():  # noqa: SLF001 (no public API)
        return flags
    values = tf.constant([float(flag) for flag in flags])
    summed = strategy.reduce(
        tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.identity(values)), axis=None
    )
    return [bool(value > 0) for value in summed.numpy()]
