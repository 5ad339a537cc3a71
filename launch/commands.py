"""The trainer's command line, built from a frozen experiment config.

Every backend starts the same trainer (`python -m trainer.main`) with the same flags; only the
interpreter, the path of the shipped config file and the cluster around it differ. The data
directory and the distribution strategy are written into the config as well as passed as flags, so
the shipped YAML alone reproduces the job whichever of the two the trainer reads.
"""

import dataclasses

from pipeline import config as config_lib

TRAINER_MODULE = "trainer.main"
PREPROCESSING_MODULE = "preprocessing.main"


@dataclasses.dataclass(frozen=True)
class TrainerJob:
    """One training run: what to train (the frozen config) and where it writes."""

    experiment: str
    config: config_lib.ExperimentConfig
    model_dir: str
    restart: bool = False
    deterministic: bool = False

    @property
    def config_yaml(self) -> str:
        """The text shipped to the cluster and passed to the trainer as --config_file."""
        return config_lib.to_yaml(self.config)

    def flags(self, config_file: str) -> list[str]:
        """The trainer's absl flags, given where the config YAML will be on the worker."""
        runtime = self.config.runtime
        flags = [
            f"--experiment={self.experiment}",
            f"--config_file={config_file}",
            f"--data_dir={self.config.data.data_dir}",
            f"--model_dir={self.model_dir}",
            f"--strategy={runtime.strategy}",
        ]
        if runtime.tpu:
            flags.append(f"--tpu={runtime.tpu}")
        if self.restart:
            flags.append("--restart")
        if self.deterministic:
            flags.append("--deterministic")
        return flags

    def argv(
        self, config_file: str, python: str = "python", module: str = TRAINER_MODULE
    ) -> list[str]:
        """`python -m trainer.main FLAGS`; `module` is replaceable so tests can run a stand-in."""
        return [python, "-m", module, *self.flags(config_file)]


def cluster_strategy(num_workers: int, configured: str) -> str:
    """Several workers need MultiWorkerMirroredStrategy; one worker keeps the config's choice."""
    return "multi_worker_mirrored" if num_workers > 1 else configured


def build_trainer_job(
    experiment: str,
    model_dir: str,
    *,
    config_file: str = "",
    params_override: str = "",
    data_dir: str = "",
    num_workers: int = 1,
    strategy: str = "",
    tpu: str = "",
    restart: bool = False,
    deterministic: bool = False,
) -> TrainerJob:
    """Builds the config in the trainer's own order, then records where and how it runs.

    Args:
      experiment: a registered experiment name.
      model_dir: where the trainer writes checkpoints (not part of the config).
      config_file: optional YAML applied over the experiment, e.g. a run's saved config.yaml.
      params_override: optional `section.field=value,...` applied last.
      data_dir: the preprocessed dataset; empty keeps the config's `data.data_dir`.
      num_workers: worker processes; more than one selects MultiWorkerMirroredStrategy.
      strategy: forces `runtime.strategy` (e.g. 'tpu'); empty derives it from `num_workers`.
      tpu: `runtime.tpu` for strategy 'tpu'.
      restart: passes --restart (start over instead of resuming).
      deterministic: passes --deterministic.

    Returns:
      The job, its config validated and frozen.

    Raises:
      pipeline.config.ConfigError: the config is invalid or names no data directory.
    """
    config = config_lib.build_config(experiment, config_file, params_override)
    runtime = {"strategy": strategy or cluster_strategy(num_workers, config.runtime.strategy)}
    if tpu:
        runtime["tpu"] = tpu
    updates = {"runtime": runtime}
    if data_dir:
        updates["data"] = {"data_dir": data_dir}
    config = config_lib.validate(config_lib.merge(config, updates, where="launch"))
    if not config.data.data_dir:
        raise config_lib.ConfigError(
            "No data directory: pass --data_dir or set data.data_dir in the config file."
        )
    return TrainerJob(experiment, config, model_dir, restart, deterministic)
