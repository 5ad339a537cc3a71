"""Submits the Beam preprocessing job to Dataflow: `python -m preprocessing.main` with its options.

Dataflow workers install this distribution from `--setup_file`, so they run the same code as this
machine; temporary and staging files go to Cloud Storage in the job's region.
"""

import dataclasses
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from launch import commands, runner


@dataclasses.dataclass(frozen=True)
class DataflowSpec:
    """The preprocessing job's input, output and Dataflow options."""

    input: str
    output_dir: str
    project: str
    region: str
    temp_location: str
    setup_file: str
    job_name: str
    staging_location: str = ""
    extra_args: Sequence[str] = ()


def default_setup_file() -> str:
    """This checkout's setup.py (the one that declares the distribution)."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.py")


def render_argv(spec: DataflowSpec, python: str = "python") -> list[str]:
    """The Beam job's command line; `extra_args` (other PipelineOptions) go last, unchanged."""
    staging = spec.staging_location or f"{spec.temp_location.rstrip('/')}/staging"
    return [
        python,
        "-m",
        commands.PREPROCESSING_MODULE,
        f"--input={spec.input}",
        f"--output_dir={spec.output_dir}",
        "--runner=DataflowRunner",
        f"--project={spec.project}",
        f"--region={spec.region}",
        f"--temp_location={spec.temp_location}",
        f"--staging_location={staging}",
        f"--setup_file={spec.setup_file}",
        f"--job_name={spec.job_name}",
        *spec.extra_args,
    ]


def submit(spec: DataflowSpec, *, dry_run: bool, out: TextIO) -> None:
    """Runs the Beam job's launcher here (it submits to Dataflow), or prints its command line.

    Raises:
      runner.LaunchError: the job's launcher fails.
    """
    runner.run(render_argv(spec, python=sys.executable), dry_run=dry_run, out=out)
