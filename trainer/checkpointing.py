"""Checkpoints of a `TrainState`: periodic saves, restore with fallback, best weights, config.

Only the chief's files count. Saving is a collective operation, so other workers save too, into
throwaway directories (`distribution.write_dir`); every worker restores from the chief's.
"""

import shutil

import tensorflow as tf
import yaml
from absl import logging

from pipeline import config as config_lib
from trainer import distribution

# A checkpoint without this variable predates positioned input and cannot resume exactly.
_POSITIONS_KEY = "input_positions/.ATTRIBUTES/VARIABLE_VALUE"


class CheckpointError(RuntimeError):
    """The run directory's checkpoints cannot be resumed; the message says what to do."""


class Checkpointer:
    """Saves and restores one `state.TrainState` in its run directory."""

    def __init__(self, state, strategy: tf.distribute.Strategy, keep: int):
        self.state = state
        self.layout = state.layout
        self.is_chief = distribution.is_chief(strategy)
        self.manager = tf.train.CheckpointManager(
            state.checkpoint,
            distribution.write_dir(self.layout.checkpoints, strategy),
            max_to_keep=keep,
        )

    def saved(self) -> list[str]:
        """The chief's checkpoints, oldest first."""
        checkpoints = tf.train.get_checkpoint_state(self.layout.checkpoints)
        return list(checkpoints.all_model_checkpoint_paths) if checkpoints else []

    def save(self) -> str:
        return self.manager.save(checkpoint_number=self.state.step)

    def restore(self) -> int:
        """Restores the newest loadable checkpoint; returns the step resumed from (0: none).

        A checkpoint that fails to load (truncated or corrupted files) is reported by name and
        the next older one is tried, so one bad write never strands a run.

        Raises:
          CheckpointError: checkpoints exist but none loads, or they predate input positions.
        """
        saved = self.saved()
        for path in reversed(saved):
            _refuse_unpositioned(path)
            try:
                self.state.checkpoint.restore(path).assert_existing_objects_matched()
            except (tf.errors.OpError, ValueError, AssertionError) as e:
                logging.error(
                    "Checkpoint %s cannot be loaded (%s: %s); falling back to the previous one.",
                    path,
                    type(e).__name__,
                    str(e).splitlines()[0][:200],
                )
                continue
            logging.info(
                "Resumed from %s at step %d (sampling probability %.4f, best dev BLEU %.2f).",
                path,
                self.state.step,
                float(self.state.task.sampling_probability(self.state.step)),
                float(self.state.best_bleu.numpy()),
            )
            return self.state.step
        if saved:
            raise CheckpointError(
                f"No checkpoint in {self.layout.checkpoints} could be loaded; "
                "rerun with --restart to start over."
            )
        return 0

    def check_resumable(self, cfg: config_lib.ExperimentConfig):
        """Refuses to resume under a config that would not continue the saved run exactly."""
        if not tf.io.gfile.exists(self.layout.config) or not self.saved():
            return
        with tf.io.gfile.GFile(self.layout.config) as f:
            saved = config_lib.from_dict(yaml.safe_load(f))
        conflicts = config_lib.resume_conflicts(saved, cfg)
        if conflicts:
            raise config_lib.ConfigError(
                f"{self.layout.root} holds checkpoints of a different config; changed fields:\n  "
                + "\n  ".join(conflicts)
                + "\nUse the saved config (--config_file of its config.yaml), another "
                "--model_dir, or --restart."
            )

    def write_config(self, cfg: config_lib.ExperimentConfig):
        """The chief writes the frozen config next to its checkpoints."""
        if not self.is_chief:
            return
        tf.io.gfile.makedirs(self.layout.root)
        with tf.io.gfile.GFile(self.layout.config, "w") as f:
            f.write(config_lib.to_yaml(cfg))

    def save_best(self):
        """The chief copies the current state to the best-checkpoint directory."""
        if not self.is_chief:
            return
        best = self.layout.best_checkpoint
        if tf.io.gfile.exists(best):
            tf.io.gfile.rmtree(best)
        path = self.state.checkpoint.write(best + "/ckpt")
        logging.info(
            "New best dev BLEU %.2f at step %d: %s",
            float(self.state.best_bleu.numpy()),
            self.state.step,
            path,
        )

    def restore_best(self) -> bool:
        """Loads the best-BLEU weights if they exist (used before the final test and export)."""
        path = self.layout.best_checkpoint + "/ckpt"
        if not tf.io.gfile.exists(path + ".index"):
            return False
        self.state.checkpoint.read(path).assert_existing_objects_matched()
        return True

    def cleanup(self):
        """Removes a non-chief worker's throwaway checkpoint directory."""
        if not self.is_chief:
            shutil.rmtree(self.manager.directory, ignore_errors=True)


def _refuse_unpositioned(path: str):
    """Stops with a clear message on a checkpoint written before input positions existed."""
    try:
        names = {name for name, _ in tf.train.list_variables(path)}
    except (tf.errors.OpError, ValueError):
        return  # unreadable: `restore` reports it and falls back
    if _POSITIONS_KEY not in names:
        raise CheckpointError(
            f"{path} was written by an older trainer that did not save input positions, so "
            "this run cannot continue it exactly; start over with --restart (or another "
            "--model_dir)."
        )
