"""Cloud TPU VM commands for a pod slice: create it, copy the frozen config, run the trainer.

All are `gcloud compute tpus tpu-vm` argv lists. The command run on the workers over ssh is the one
shell string that cannot be avoided; it is built with `shlex.join`, so no value is ever re-parsed.
The trainer must already be installed on the VMs (the base runtime has no TensorFlow): pass an
install step as `setup_command`, or use a runtime version that ships it.
"""

import dataclasses
import logging
import os
import shlex
import tempfile
from collections.abc import Mapping
from typing import TextIO

from launch import commands, runner
from pipeline import redact

REMOTE_CONFIG = "/tmp/nmt_config.yaml"
_GCLOUD_TPU_VM = ("gcloud", "compute", "tpus", "tpu-vm")


@dataclasses.dataclass(frozen=True)
class TpuVmSpec:
    """The TPU side of a job; the trainer side is a `commands.TrainerJob`."""

    name: str
    zone: str
    project: str = ""
    accelerator_type: str = "v4-32"
    runtime_version: str = "tpu-ubuntu2204-base"
    worker: str = "all"
    create: bool = True
    setup_command: str = ""
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)


def local_config_path(spec: TpuVmSpec) -> str:
    """Where the frozen config is written before it is copied to the workers."""
    return os.path.join(tempfile.gettempdir(), f"nmt-launch-{spec.name}", "config.yaml")


def remote_command(spec: TpuVmSpec, job: commands.TrainerJob) -> str:
    """The shell line each worker runs: optional setup, then the trainer."""
    env_words = [f"{name}={value}" for name, value in spec.env.items()]
    argv = job.argv(REMOTE_CONFIG, python="python3")
    line = shlex.join(["env", *env_words, *argv] if env_words else argv)
    return f"{spec.setup_command} && {line}" if spec.setup_command else line


def render_commands(
    spec: TpuVmSpec, job: commands.TrainerJob, local_config: str
) -> list[list[str]]:
    """The gcloud argv lists, in order: create (unless `spec.create` is off), scp, ssh."""
    where = [f"--zone={spec.zone}"] + ([f"--project={spec.project}"] if spec.project else [])
    workers = f"--worker={spec.worker}"
    steps = []
    if spec.create:
        steps.append(
            [
                *_GCLOUD_TPU_VM,
                "create",
                spec.name,
                *where,
                f"--accelerator-type={spec.accelerator_type}",
                f"--version={spec.runtime_version}",
            ]
        )
    steps.append(
        [*_GCLOUD_TPU_VM, "scp", local_config, f"{spec.name}:{REMOTE_CONFIG}", *where, workers]
    )
    steps.append(
        [
            *_GCLOUD_TPU_VM,
            "ssh",
            spec.name,
            *where,
            workers,
            f"--command={remote_command(spec, job)}",
        ]
    )
    return steps


def submit(spec: TpuVmSpec, job: commands.TrainerJob, *, dry_run: bool, out: TextIO) -> None:
    """Writes the config locally and runs the gcloud steps; on a dry run prints them instead.

    Raises:
      runner.LaunchError: gcloud is missing or a step fails (later steps are not run).
    """
    local_config = local_config_path(spec)
    if dry_run:
        spec = dataclasses.replace(spec, env=redact.redact_env(spec.env))
        logging.info("Dry run: would write the frozen config to %s", local_config)
    else:
        os.makedirs(os.path.dirname(local_config), exist_ok=True)
        with open(local_config, "w", encoding="utf-8") as f:
            f.write(job.config_yaml)
    for argv in render_commands(spec, job, local_config):
        runner.run(argv, dry_run=dry_run, out=out)
