"""Cloud TPU VM commands for TensorFlow 2.15: create the TPU, copy the config, run the trainer.

What runs where follows Google's documentation (pages named in launch/README.md):

- The TPU software version carries TensorFlow: `tpu-vm-tf-<version>[-pod]-pjrt`, with `-pod` on a
  slice of more than one host. (`tpu-ubuntu2204-base` is the PyTorch/JAX image: no TensorFlow.)
- One host (e.g. v4-8): the trainer runs on the VM and drives its own chips (`--tpu=local`); the
  PJRT device API is switched on with NEXT_PLUGGABLE_DEVICE_USE_C_API and
  TF_PLUGGABLE_DEVICE_LIBRARY_PATH.
- A pod slice (e.g. v4-32): the runtime serves TensorFlow on every host. The trainer runs on
  worker 0 only, names the TPU (`--tpu=NAME`) so `TPUClusterResolver` asks the Cloud TPU API for
  every host's endpoint, and sets TPU_LOAD_LIBRARY=0 so it leaves worker 0's chips to that host's
  server.

Either way exactly one trainer process drives the TPU, so exactly one process writes checkpoints.
All steps are `gcloud compute tpus tpu-vm` argv lists; the line run over ssh is built with
`shlex.join`, so no value is ever re-parsed by a shell.
"""

import dataclasses
import logging
import os
import re
import shlex
import tempfile
from collections.abc import Mapping
from typing import TextIO

from launch import commands, runner
from pipeline import redact

# The TensorFlow the trainer is pinned to (requirements.lock; a test keeps the two equal).
TENSORFLOW_VERSION = "2.15.1"
REMOTE_CONFIG = "/tmp/nmt_config.yaml"
_GCLOUD_TPU_VM = ("gcloud", "compute", "tpus", "tpu-vm")
# The only worker that runs anything: the whole VM on one host, the coordinator on a pod slice.
_WORKER = "0"
# Accelerator types name TensorCores for v2-v4 and chips for v5e; either way 8 per host.
_ACCELERATOR = re.compile(r"(v2|v3|v4|v5litepod)-(\d+)")
_PER_HOST = 8
_SINGLE_HOST_ENV = {
    "NEXT_PLUGGABLE_DEVICE_USE_C_API": "true",
    "TF_PLUGGABLE_DEVICE_LIBRARY_PATH": "/lib/libtpu.so",
}
_POD_ENV = {"TPU_LOAD_LIBRARY": "0"}


def hosts(accelerator_type: str) -> int:
    """TPU VM hosts in a slice: v4-8 is one host, v4-32 four.

    Raises:
      ValueError: not a TPU type this launcher knows the host layout of.
    """
    match = _ACCELERATOR.fullmatch(accelerator_type)
    if not match:
        raise ValueError(
            f"accelerator type {accelerator_type!r} is not one of v2-N, v3-N, v4-N (TensorCores) "
            "or v5litepod-N (chips), whose host layout this launcher knows."
        )
    return max(1, -(-int(match.group(2)) // _PER_HOST))


def default_runtime_version(accelerator_type: str) -> str:
    """`tpu-vm-tf-2.15.1-pjrt` on one host, `tpu-vm-tf-2.15.1-pod-pjrt` on a pod slice."""
    pod = "-pod" if hosts(accelerator_type) > 1 else ""
    return f"tpu-vm-tf-{TENSORFLOW_VERSION}{pod}-pjrt"


@dataclasses.dataclass(frozen=True)
class TpuVmSpec:
    """The TPU side of a job; the trainer side is a `commands.TrainerJob`."""

    name: str
    zone: str
    project: str = ""
    accelerator_type: str = "v4-32"
    runtime_version: str = ""  # empty: `default_runtime_version(accelerator_type)`
    create: bool = True
    setup_command: str = ""
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def multi_host(self) -> bool:
        return hosts(self.accelerator_type) > 1

    @property
    def software_version(self) -> str:
        return self.runtime_version or default_runtime_version(self.accelerator_type)

    @property
    def trainer_tpu(self) -> str:
        """The trainer's --tpu: its own chips on one host; the TPU's name on a pod slice."""
        return self.name if self.multi_host else "local"


def local_config_path(spec: TpuVmSpec) -> str:
    """Where the frozen config is written before it is copied to worker 0."""
    return os.path.join(tempfile.gettempdir(), f"nmt-launch-{spec.name}", "config.yaml")


def remote_command(spec: TpuVmSpec, job: commands.TrainerJob) -> str:
    """The shell line worker 0 runs: optional setup, then the trainer with the TPU's environment."""
    env = {**(_POD_ENV if spec.multi_host else _SINGLE_HOST_ENV), **spec.env}
    argv = job.argv(REMOTE_CONFIG, python="python3")
    line = shlex.join(["env", *(f"{name}={value}" for name, value in env.items()), *argv])
    return f"{spec.setup_command} && {line}" if spec.setup_command else line


def render_commands(
    spec: TpuVmSpec, job: commands.TrainerJob, local_config: str
) -> list[list[str]]:
    """The gcloud argv lists, in order: create (unless `spec.create` is off), scp, ssh."""
    where = [f"--zone={spec.zone}"] + ([f"--project={spec.project}"] if spec.project else [])
    worker = f"--worker={_WORKER}"
    steps = []
    if spec.create:
        steps.append(
            [
                *_GCLOUD_TPU_VM,
                "create",
                spec.name,
                *where,
                f"--accelerator-type={spec.accelerator_type}",
                f"--version={spec.software_version}",
            ]
        )
    steps.append(
        [*_GCLOUD_TPU_VM, "scp", local_config, f"{spec.name}:{REMOTE_CONFIG}", *where, worker]
    )
    steps.append(
        [
            *_GCLOUD_TPU_VM,
            "ssh",
            spec.name,
            *where,
            worker,
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
