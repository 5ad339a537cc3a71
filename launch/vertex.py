"""Renders a Vertex AI CustomJob request and submits it with google-cloud-aiplatform.

Worker pool 0 holds the chief and pool 1 the other workers; Vertex gives each replica its TF_CONFIG.
The frozen config is uploaded next to the job's outputs and passed to the trainer by its gs:// path.
The body printed by --dry_run is the one submitted, secrets aside.
"""

import dataclasses
import importlib
import json
import logging
from collections.abc import Mapping
from typing import TextIO

from launch import commands, runner
from pipeline import redact

_PACKAGE = "google-cloud-aiplatform"


@dataclasses.dataclass(frozen=True)
class CustomJobSpec:
    """The cluster side of a CustomJob; the trainer side is a `commands.TrainerJob`."""

    display_name: str
    project: str
    region: str
    image: str
    base_output_dir: str
    machine_type: str = "n1-standard-8"
    accelerator_type: str = ""
    accelerator_count: int = 0
    num_workers: int = 1
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)


def config_uri(spec: CustomJobSpec) -> str:
    """Where the frozen config is uploaded for the trainer to read."""
    return f"{spec.base_output_dir.rstrip('/')}/config/config.yaml"


def default_model_dir(base_output_dir: str) -> str:
    """Vertex's own convention (it sets AIP_MODEL_DIR to this)."""
    return f"{base_output_dir.rstrip('/')}/model"


def api_endpoint(spec: CustomJobSpec) -> str:
    return f"{spec.region}-aiplatform.googleapis.com"


def parent(spec: CustomJobSpec) -> str:
    return f"projects/{spec.project}/locations/{spec.region}"


def request_url(spec: CustomJobSpec) -> str:
    """The REST URL the body is POSTed to."""
    return f"https://{api_endpoint(spec)}/v1/{parent(spec)}/customJobs"


def _worker_pool(spec: CustomJobSpec, job: commands.TrainerJob, replicas: int) -> dict:
    machine = {"machineType": spec.machine_type}
    if spec.accelerator_type:
        machine["acceleratorType"] = spec.accelerator_type
        machine["acceleratorCount"] = spec.accelerator_count
    python, dash_m, module, *flags = job.argv(config_uri(spec))
    container = {"imageUri": spec.image, "command": [python, dash_m, module], "args": flags}
    if spec.env:
        container["env"] = [{"name": name, "value": value} for name, value in spec.env.items()]
    return {"machineSpec": machine, "replicaCount": replicas, "containerSpec": container}


def render_custom_job(spec: CustomJobSpec, job: commands.TrainerJob) -> dict:
    """The CustomJob request body (REST JSON field names)."""
    pools = [_worker_pool(spec, job, 1)]
    if spec.num_workers > 1:
        pools.append(_worker_pool(spec, job, spec.num_workers - 1))
    return {
        "displayName": spec.display_name,
        "jobSpec": {
            "workerPoolSpecs": pools,
            "baseOutputDirectory": {"outputUriPrefix": spec.base_output_dir},
        },
    }


def _import(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise runner.LaunchError(
            f"Submitting to Vertex AI needs the {_PACKAGE} package ({module} did not import): "
            f"pip install {_PACKAGE}, or pass --dry_run to print the request instead."
        ) from None


def _upload(storage, uri: str, text: str, project: str) -> None:
    bucket, _, path = uri.removeprefix("gs://").partition("/")
    blob = storage.Client(project=project).bucket(bucket).blob(path)
    blob.upload_from_string(text, content_type="text/yaml")


def submit(spec: CustomJobSpec, job: commands.TrainerJob, *, dry_run: bool, out: TextIO) -> None:
    """Uploads the config and creates the CustomJob; on a dry run prints the body instead.

    Raises:
      runner.LaunchError: google-cloud-aiplatform is not installed.
    """
    if dry_run:
        redacted = dataclasses.replace(spec, env=redact.redact_env(spec.env))
        logging.info("Dry run: would upload the frozen config to %s", config_uri(spec))
        logging.info("Dry run: would POST the body below to %s", request_url(spec))
        out.write(json.dumps(render_custom_job(redacted, job), indent=2) + "\n")
        return
    aiplatform = _import("google.cloud.aiplatform_v1")
    storage = _import("google.cloud.storage")
    _upload(storage, config_uri(spec), job.config_yaml, spec.project)
    client = aiplatform.JobServiceClient(client_options={"api_endpoint": api_endpoint(spec)})
    created = client.create_custom_job(
        parent=parent(spec),
        custom_job=aiplatform.CustomJob.from_json(json.dumps(render_custom_job(spec, job))),
    )
    logging.info("Created Vertex AI custom job %s", created.name)
