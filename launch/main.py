"""`nmt-launch`: builds a job from an experiment config and runs it locally or submits it.

Subcommands: local, kubernetes, vertex, tpu, dataflow. Every flag is defined and checked here,
before any work; the backends receive plain specs. Every cloud path has --dry_run, which prints what
would be submitted (secrets masked) to standard output and runs nothing.

  nmt-launch local --experiment=attention_seq2seq/tiny --data_dir=D --model_dir=M --num_workers=2
  nmt-launch kubernetes --dry_run --experiment=... --data_dir=gs://... --model_dir=gs://... \\
      --job_name=nmt-base --image=REGISTRY/nmt-trainer-gpu:TAG --num_workers=4 --gpus=1
"""

import argparse
import datetime
import logging
import os
import re
import sys

from launch import commands, dataflow, kubernetes, local, runner, tpu_vm, vertex
from pipeline import config as config_lib
from pipeline import console

# RFC 1035 labels: Kubernetes, Cloud TPU and Dataflow names all take this form.
_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MODULE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
# A Kubernetes resource quantity, as the TFJob CRD's schema spells it.
_QUANTITY = re.compile(
    r"(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?"
)
# Pods are named `<job>-worker-<index>` and must stay within a 63-character DNS label.
_MAX_K8S_JOB_NAME = 48


class _FlagError(ValueError):
    """A flag value is wrong; the message names the flag."""


def _add_trainer_flags(parser: argparse.ArgumentParser, model_dir_required: bool = True) -> None:
    group = parser.add_argument_group("trainer")
    group.add_argument("--experiment", required=True, help="Registered experiment name.")
    group.add_argument("--config_file", default="", help="YAML applied over the experiment.")
    group.add_argument(
        "--params_override", default="", help="section.field=value,... applied last."
    )
    group.add_argument("--data_dir", default="", help="Default: the config's data.data_dir.")
    group.add_argument("--model_dir", required=model_dir_required, default="")
    group.add_argument("--restart", action="store_true", help="Start over instead of resuming.")
    group.add_argument("--deterministic", action="store_true")
    group.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="Repeatable."
    )


def _add_dry_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry_run", action="store_true", help="Print what would run; run nothing.")


def _build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and its subcommand parsers by name (their `error` names the backend)."""
    parser = argparse.ArgumentParser(
        prog="nmt-launch", description=__doc__.split("\n\n")[0], allow_abbrev=False
    )
    sub = parser.add_subparsers(dest="backend", required=True, metavar="BACKEND")

    p = sub.add_parser("local", allow_abbrev=False, help="Worker processes on this machine.")
    _add_trainer_flags(p)
    p.add_argument("--num_workers", type=int, default=2, help="Worker processes.")
    p.add_argument("--module", default=commands.TRAINER_MODULE, help="Module each worker runs.")
    p.add_argument("--grace_seconds", type=float, default=30.0, help="SIGTERM-to-SIGKILL wait.")
    _add_dry_run(p)

    p = sub.add_parser(
        "kubernetes", allow_abbrev=False, help="A Kubeflow TFJob applied with kubectl."
    )
    _add_trainer_flags(p)
    p.add_argument("--job_name", required=True, help="TFJob name (lower-case DNS label).")
    p.add_argument("--image", required=True, help="Trainer image (see docker/).")
    p.add_argument("--namespace", default="default")
    p.add_argument("--num_workers", type=int, default=1, help="Replicas, the chief included.")
    p.add_argument("--cpu", default="4", help="CPU request and limit per replica.")
    p.add_argument("--memory", default="16Gi", help="Memory request and limit per replica.")
    p.add_argument("--gpus", type=int, default=0, help="nvidia.com/gpu per replica.")
    p.add_argument("--volume_claim", default="", help="PersistentVolumeClaim to mount.")
    p.add_argument("--volume_mount", default="/mnt/nmt", help="Where --volume_claim is mounted.")
    _add_dry_run(p)

    p = sub.add_parser("vertex", allow_abbrev=False, help="A Vertex AI CustomJob.")
    _add_trainer_flags(p, model_dir_required=False)
    p.add_argument("--job_name", required=True, help="The job's display name.")
    p.add_argument("--project", required=True)
    p.add_argument("--region", default="us-central1")
    p.add_argument("--image", required=True, help="Trainer image (see docker/).")
    p.add_argument("--base_output_dir", required=True, help="gs:// directory for the job's files.")
    p.add_argument("--machine_type", default="n1-standard-8")
    p.add_argument("--accelerator_type", default="", help="E.g. NVIDIA_TESLA_T4.")
    p.add_argument("--accelerator_count", type=int, default=0)
    p.add_argument("--num_workers", type=int, default=1, help="Replicas, the chief included.")
    _add_dry_run(p)

    p = sub.add_parser("tpu", allow_abbrev=False, help="A Cloud TPU VM pod slice through gcloud.")
    _add_trainer_flags(p)
    p.add_argument("--tpu_name", required=True)
    p.add_argument("--zone", required=True)
    p.add_argument("--project", default="", help="Default: gcloud's configured project.")
    p.add_argument("--accelerator_type", default="v4-32", help="E.g. v4-8 (one host), v4-32.")
    p.add_argument(
        "--runtime_version",
        default="",
        help=f"TPU software version; default tpu-vm-tf-{tpu_vm.TENSORFLOW_VERSION}[-pod]-pjrt.",
    )
    p.add_argument("--skip_create", action="store_true", help="Use an existing TPU VM.")
    p.add_argument("--setup_command", default="", help="Shell line worker 0 runs first.")
    _add_dry_run(p)

    p = sub.add_parser(
        "dataflow",
        allow_abbrev=False,
        help="The Beam preprocessing job on Dataflow.",
        epilog="Other arguments are passed to the Beam job unchanged (PipelineOptions).",
    )
    p.add_argument("--input", required=True, help="Raw parallel text.")
    p.add_argument("--output_dir", required=True, help="gs:// directory for the dataset.")
    p.add_argument("--project", required=True)
    p.add_argument("--region", required=True)
    p.add_argument("--temp_location", required=True, help="gs:// temporary directory.")
    p.add_argument("--staging_location", default="", help="Default: TEMP_LOCATION/staging.")
    p.add_argument("--setup_file", default=dataflow.default_setup_file())
    p.add_argument("--job_name", default="", help="Default: nmt-preprocess-<UTC time>.")
    _add_dry_run(p)
    return parser, sub.choices


def _check_name(value: str, flag: str, max_length: int = 63) -> None:
    if not _NAME.fullmatch(value) or len(value) > max_length:
        raise _FlagError(
            f"{flag}={value!r} must be lower-case letters, digits and '-', start with a letter, "
            f"not end with '-', and be at most {max_length} characters."
        )


def _check_gcs(value: str, flag: str) -> None:
    if not value.startswith("gs://"):
        raise _FlagError(f"{flag}={value!r} must be a gs:// path.")


def _check_positive(value: float, flag: str, minimum: float = 1) -> None:
    if value < minimum:
        raise _FlagError(f"{flag}={value} must be at least {minimum}.")


def _parse_env(words: list[str]) -> dict[str, str]:
    env = {}
    for word in words:
        name, sep, value = word.partition("=")
        if not sep or not _ENV_NAME.fullmatch(name):
            shown = f"{name}=..." if sep else name
            raise _FlagError(f"--env {shown!r} must be NAME=VALUE with NAME like MY_VAR.")
        env[name] = value
    return env


def _trainer_job(args, num_workers: int, strategy: str = "", tpu: str = "", model_dir: str = ""):
    """Builds the frozen job config; a config problem becomes a flag error naming its source."""
    if args.experiment not in config_lib.registered_experiments():
        known = ", ".join(config_lib.registered_experiments())
        raise _FlagError(f"--experiment={args.experiment!r} is not registered; known: {known}.")
    if args.config_file and not os.path.isfile(args.config_file):
        raise _FlagError(f"--config_file={args.config_file!r} does not exist.")
    try:
        return commands.build_trainer_job(
            args.experiment,
            model_dir or args.model_dir,
            config_file=args.config_file,
            params_override=args.params_override,
            data_dir=args.data_dir,
            num_workers=num_workers,
            strategy=strategy,
            tpu=tpu,
            restart=args.restart,
            deterministic=args.deterministic,
        )
    except config_lib.ConfigError as e:
        raise _FlagError(f"config from --experiment/--config_file/--params_override: {e}") from None


def _run_local(args) -> int:
    _check_positive(args.num_workers, "--num_workers")
    _check_positive(args.grace_seconds, "--grace_seconds", minimum=0)
    if not _MODULE.fullmatch(args.module):
        raise _FlagError(f"--module={args.module!r} is not a dotted module name.")
    env = _parse_env(args.env)
    job = _trainer_job(args, args.num_workers)
    status = local.launch(
        job,
        args.num_workers,
        module=args.module,
        env=env,
        grace_seconds=args.grace_seconds,
        dry_run=args.dry_run,
        out=sys.stdout,
    )
    if status:
        logging.error("Local job failed with exit status %d.", status)
    return status


def _run_kubernetes(args) -> int:
    _check_name(args.job_name, "--job_name", _MAX_K8S_JOB_NAME)
    _check_name(args.namespace, "--namespace")
    _check_positive(args.num_workers, "--num_workers")
    _check_positive(args.gpus, "--gpus", minimum=0)
    for flag, value in (("--cpu", args.cpu), ("--memory", args.memory)):
        if not _QUANTITY.fullmatch(value):
            raise _FlagError(f"{flag}={value!r} is not a Kubernetes quantity (e.g. 4, 500m, 16Gi).")
    if args.volume_claim:
        _check_name(args.volume_claim, "--volume_claim", max_length=253)
    spec = kubernetes.TFJobSpec(
        name=args.job_name,
        image=args.image,
        namespace=args.namespace,
        num_workers=args.num_workers,
        cpu=args.cpu,
        memory=args.memory,
        gpus=args.gpus,
        env=_parse_env(args.env),
        volume_claim=args.volume_claim,
        volume_mount=args.volume_mount,
    )
    job = _trainer_job(args, args.num_workers)
    kubernetes.submit(spec, job, dry_run=args.dry_run, out=sys.stdout)
    return 0


def _run_vertex(args) -> int:
    _check_gcs(args.base_output_dir, "--base_output_dir")
    _check_positive(args.num_workers, "--num_workers")
    if bool(args.accelerator_type) != (args.accelerator_count > 0):
        raise _FlagError("--accelerator_type and --accelerator_count > 0 go together.")
    spec = vertex.CustomJobSpec(
        display_name=args.job_name,
        project=args.project,
        region=args.region,
        image=args.image,
        base_output_dir=args.base_output_dir,
        machine_type=args.machine_type,
        accelerator_type=args.accelerator_type,
        accelerator_count=args.accelerator_count,
        num_workers=args.num_workers,
        env=_parse_env(args.env),
    )
    model_dir = args.model_dir or vertex.default_model_dir(args.base_output_dir)
    job = _trainer_job(args, args.num_workers, model_dir=model_dir)
    vertex.submit(spec, job, dry_run=args.dry_run, out=sys.stdout)
    return 0


def _run_tpu(args) -> int:
    _check_name(args.tpu_name, "--tpu_name")
    try:
        tpu_vm.hosts(args.accelerator_type)
    except ValueError as e:
        raise _FlagError(f"--accelerator_type: {e}") from None
    if args.runtime_version and not args.runtime_version.startswith("tpu-vm-tf-"):
        raise _FlagError(
            f"--runtime_version={args.runtime_version!r} carries no TensorFlow: use a "
            "tpu-vm-tf-* software version (gcloud compute tpus tpu-vm versions list)."
        )
    spec = tpu_vm.TpuVmSpec(
        name=args.tpu_name,
        zone=args.zone,
        project=args.project,
        accelerator_type=args.accelerator_type,
        runtime_version=args.runtime_version,
        create=not args.skip_create,
        setup_command=args.setup_command,
        env=_parse_env(args.env),
    )
    job = _trainer_job(args, num_workers=1, strategy="tpu", tpu=spec.trainer_tpu)
    if spec.multi_host:
        # Every host of a slice reads its share of the input itself: paths must be shared.
        _check_gcs(job.config.data.data_dir, "--data_dir (on a multi-host slice)")
        _check_gcs(job.model_dir, "--model_dir (on a multi-host slice)")
    tpu_vm.submit(spec, job, dry_run=args.dry_run, out=sys.stdout)
    return 0


def _run_dataflow(args, beam_args: list[str]) -> int:
    job_name = args.job_name or datetime.datetime.now(datetime.UTC).strftime(
        "nmt-preprocess-%Y%m%d-%H%M%S"
    )
    _check_name(job_name, "--job_name", max_length=1024)
    _check_gcs(args.temp_location, "--temp_location")
    if args.staging_location:
        _check_gcs(args.staging_location, "--staging_location")
    if not os.path.isfile(args.setup_file):
        raise _FlagError(f"--setup_file={args.setup_file!r} does not exist.")
    spec = dataflow.DataflowSpec(
        input=args.input,
        output_dir=args.output_dir,
        project=args.project,
        region=args.region,
        temp_location=args.temp_location,
        staging_location=args.staging_location,
        setup_file=os.path.abspath(args.setup_file),
        job_name=job_name,
        extra_args=tuple(beam_args),
    )
    dataflow.submit(spec, dry_run=args.dry_run, out=sys.stdout)
    return 0


def run(argv: list[str] | None = None) -> int:
    """Parses `argv` (default: the command line), checks every flag, then launches.

    Returns:
      The exit status: 0 on success, 2 for a bad flag, 1 when a step fails, or a failed local job's
      status.
    """
    console.start_if_program("nmt-launch", __name__, run_dir_flag="--model_dir", native=False)
    logging.basicConfig(level=logging.INFO, format="nmt-launch: %(message)s")
    parser, subparsers = _build_parser()
    args, unknown = parser.parse_known_args(argv)
    subparser = subparsers[args.backend]
    try:
        if args.backend == "dataflow":
            return _run_dataflow(args, unknown)
        if unknown:
            raise _FlagError(f"unrecognized arguments: {' '.join(unknown)}")
        return _BACKENDS[args.backend](args)
    except _FlagError as e:
        subparser.error(str(e))
    except runner.LaunchError as e:
        logging.error("%s", e)
        return 1


_BACKENDS = {
    "local": _run_local,
    "kubernetes": _run_kubernetes,
    "vertex": _run_vertex,
    "tpu": _run_tpu,
}


if __name__ == "__main__":
    sys.exit(run())
