"""Renders a Kubeflow TFJob, plus a ConfigMap with the frozen config, and applies it with kubectl.

The TFJob has one Chief replica and `num_workers - 1` Worker replicas; the operator gives each pod
its TF_CONFIG. Every pod mounts the ConfigMap, so the trainer reads the very config rendered here.
"""

import dataclasses
import logging
from collections.abc import Mapping
from typing import TextIO

import yaml

from launch import commands, runner
from pipeline import redact

API_VERSION = "kubeflow.org/v1"
# The TFJob operator finds the training container, and sets its port, by this name.
CONTAINER_NAME = "tensorflow"
CONFIG_DIR = "/etc/nmt"
CONFIG_KEY = "config.yaml"
_TFJOB_PORT = {"name": "tfjob-port", "containerPort": 2222}
# With restartPolicy OnFailure, a job that crashes on start would otherwise restart forever.
_BACKOFF_LIMIT = 3


@dataclasses.dataclass(frozen=True)
class TFJobSpec:
    """The cluster side of a TFJob; the trainer side is a `commands.TrainerJob`."""

    name: str
    image: str
    namespace: str = "default"
    num_workers: int = 1
    cpu: str = "4"
    memory: str = "16Gi"
    gpus: int = 0
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    volume_claim: str = ""
    volume_mount: str = "/mnt/nmt"


def config_map_name(spec: TFJobSpec) -> str:
    return f"{spec.name}-config"


def render_config_map(spec: TFJobSpec, job: commands.TrainerJob) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": config_map_name(spec), "namespace": spec.namespace},
        "data": {CONFIG_KEY: job.config_yaml},
    }


def _resources(spec: TFJobSpec) -> dict:
    requests = {"cpu": spec.cpu, "memory": spec.memory}
    if spec.gpus:
        # Extended resources such as GPUs must have equal requests and limits.
        requests["nvidia.com/gpu"] = spec.gpus
    return {"requests": requests, "limits": dict(requests)}


def _pod_spec(spec: TFJobSpec, job: commands.TrainerJob) -> dict:
    container = {
        "name": CONTAINER_NAME,
        "image": spec.image,
        "command": job.argv(f"{CONFIG_DIR}/{CONFIG_KEY}"),
        "ports": [dict(_TFJOB_PORT)],
        "resources": _resources(spec),
        "volumeMounts": [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}],
    }
    volumes = [{"name": "config", "configMap": {"name": config_map_name(spec)}}]
    if spec.env:
        container["env"] = [{"name": name, "value": value} for name, value in spec.env.items()]
    if spec.volume_claim:
        container["volumeMounts"].append({"name": "data", "mountPath": spec.volume_mount})
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": spec.volume_claim}})
    return {"containers": [container], "volumes": volumes}


def render_tfjob(spec: TFJobSpec, job: commands.TrainerJob) -> dict:
    """The TFJob object (apiVersion kubeflow.org/v1) as plain dicts."""
    replica_counts = {"Chief": 1, "Worker": spec.num_workers - 1}
    replicas = {
        replica_type: {
            "replicas": count,
            "restartPolicy": "OnFailure",
            "template": {"spec": _pod_spec(spec, job)},
        }
        for replica_type, count in replica_counts.items()
        if count > 0
    }
    return {
        "apiVersion": API_VERSION,
        "kind": "TFJob",
        "metadata": {
            "name": spec.name,
            "namespace": spec.namespace,
            "annotations": {"nmt/experiment": job.experiment},
        },
        "spec": {"runPolicy": {"backoffLimit": _BACKOFF_LIMIT}, "tfReplicaSpecs": replicas},
    }


class _Dumper(yaml.SafeDumper):
    """Writes multi-line strings (the embedded config) as readable literal blocks."""


def _represent_str(dumper: yaml.SafeDumper, value: str):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def render_manifests(spec: TFJobSpec, job: commands.TrainerJob) -> str:
    """The ConfigMap and the TFJob as one multi-document YAML, ready for `kubectl apply -f -`."""
    return yaml.dump_all(
        [render_config_map(spec, job), render_tfjob(spec, job)],
        Dumper=_Dumper,
        sort_keys=False,
    )


def submit(spec: TFJobSpec, job: commands.TrainerJob, *, dry_run: bool, out: TextIO) -> None:
    """Applies the manifests with kubectl; on a dry run prints them (secrets masked) instead.

    Raises:
      runner.LaunchError: kubectl is missing or fails.
    """
    argv = ["kubectl", "apply", "-f", "-"]
    if dry_run:
        redacted = dataclasses.replace(spec, env=redact.redact_env(spec.env))
        out.write(render_manifests(redacted, job))
        logging.info("Dry run: would pipe the manifests above to: %s", runner.describe(argv))
        return
    runner.run(argv, dry_run=False, out=out, input_text=render_manifests(spec, job))
    logging.info("Applied TFJob %s/%s.", spec.namespace, spec.name)
