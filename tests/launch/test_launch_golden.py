"""Golden tests: the rendered TFJob, CustomJob body, TPU VM commands and Dataflow command line.

A change to what launch renders shows up here as a diff against tests/launch/golden/. To accept an
intended change, regenerate the files and review the diff before committing:

    NMT_UPDATE_GOLDEN=1 .venv/bin/pytest tests/launch/test_launch_golden.py
"""

import json
import os
import shlex
import tempfile

import pytest
import yaml

from launch import commands, dataflow, kubernetes, main, vertex

GOLDEN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")


def _check_golden(name: str, text: str) -> None:
    path = os.path.join(GOLDEN_DIR, name)
    if os.environ.get("NMT_UPDATE_GOLDEN"):
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    with open(path, encoding="utf-8") as f:
        assert text == f.read(), f"{name} differs; see this module's docstring to regenerate it."


@pytest.fixture
def gpu_job():
    return commands.build_trainer_job(
        "attention_seq2seq/tiny",
        "gs://nmt-bucket/runs/tiny",
        data_dir="gs://nmt-bucket/data/en-de",
        num_workers=3,
        deterministic=True,
    )


def test_tfjob(gpu_job):
    spec = kubernetes.TFJobSpec(
        name="nmt-tiny",
        image="europe-docker.pkg.dev/proj/nmt/trainer:0.1.0",
        namespace="nmt",
        num_workers=3,
        cpu="8",
        memory="32Gi",
        gpus=1,
        env={"TF_CPP_MIN_LOG_LEVEL": "2"},
        volume_claim="nmt-scratch",
    )
    rendered = yaml.safe_dump(kubernetes.render_tfjob(spec, gpu_job), sort_keys=False)
    _check_golden("tfjob.yaml", rendered)


def test_custom_job(gpu_job):
    spec = vertex.CustomJobSpec(
        display_name="nmt-tiny",
        project="proj",
        region="europe-west4",
        image="europe-docker.pkg.dev/proj/nmt/trainer:0.1.0",
        base_output_dir="gs://nmt-bucket/vertex/nmt-tiny",
        machine_type="n1-standard-8",
        accelerator_type="NVIDIA_TESLA_T4",
        accelerator_count=1,
        num_workers=3,
    )
    body = json.dumps(vertex.render_custom_job(spec, gpu_job), indent=2)
    _check_golden("custom_job.json", f"POST {vertex.request_url(spec)}\n{body}\n")


# The TPU goldens are the commands Google documents for TensorFlow 2.15 on Cloud TPU VMs (see
# launch/README.md, "Cloud TPU VM"): the software version per "TPU software versions",
# https://cloud.google.com/tpu/docs/runtimes (tpu-vm-tf-x.y.z[-pod][-pjrt], -pod on multi-host
# slices); the trainer's environment and hosts as Google's own TPU test harness runs TensorFlow,
# GoogleCloudPlatform/ml-auto-solutions: dags/solutions_team/configs/tensorflow/
# solutionsteam_tf_nightly_supported_config.py (one host: --tpu=local and the PJRT variables; a pod
# slice: TPU_LOAD_LIBRARY=0, --tpu=<name>, run on worker 0 only) and xlml/utils/tpu.py (ssh_tpu).
_TPU_ARGV = [
    "tpu",
    "--dry_run",
    "--experiment=attention_seq2seq/tiny",
    "--data_dir=gs://nmt-bucket/data/en-de",
    "--model_dir=gs://nmt-bucket/runs/tpu",
    "--zone=us-central2-b",
    "--project=proj",
    "--setup_command=pip install --no-deps ./nmt",
]


@pytest.mark.parametrize("accelerator", ["v4-8", "v4-32"])
def test_tpu_dry_run_renders_the_documented_commands(accelerator, capsys, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", "/tmp")  # the local config's path is printed
    argv = _TPU_ARGV + [f"--accelerator_type={accelerator}", f"--tpu_name=nmt-{accelerator}"]
    assert main.run(argv) == 0
    _check_golden(f"tpu_{accelerator}_commands.sh", capsys.readouterr().out)


def test_dataflow_argv():
    spec = dataflow.DataflowSpec(
        input="gs://nmt-bucket/raw/en-de.tsv.gz",
        output_dir="gs://nmt-bucket/data/en-de",
        project="proj",
        region="europe-west4",
        temp_location="gs://nmt-bucket/tmp",
        setup_file="/src/nmt/setup.py",
        job_name="nmt-preprocess-en-de",
        extra_args=("--max_num_workers=8",),
    )
    _check_golden("dataflow_argv.sh", shlex.join(dataflow.render_argv(spec)) + "\n")
