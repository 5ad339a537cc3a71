"""`nmt-launch`: flags checked before any work, dry runs of every backend, secrets never printed.

Cloud CLIs (gcloud) are replaced by stand-in programs on PATH and the Vertex AI client library by
fake modules, since neither a cloud nor google-cloud-aiplatform exists here.
"""

import json
import logging
import os
import sys
import tempfile
import types

import pytest
import yaml

from launch import main, tpu_vm

_TRAINER = ["--experiment=attention_seq2seq/tiny", "--data_dir=gs://b/data"]
_BACKENDS = {
    "local": ["local", *_TRAINER, "--model_dir=/tmp/never-written"],
    "kubernetes": ["kubernetes", *_TRAINER, "--model_dir=gs://b/m", "--job_name=nmt", "--image=i"],
    "vertex": [
        "vertex",
        *_TRAINER,
        "--job_name=nmt",
        "--project=p",
        "--image=i",
        "--base_output_dir=gs://b/out",
    ],
    "tpu": ["tpu", *_TRAINER, "--model_dir=gs://b/m", "--tpu_name=nmt-v4", "--zone=us-central2-b"],
}
_DATAFLOW = [
    "dataflow",
    "--input=gs://b/raw.tsv",
    "--output_dir=gs://b/data",
    "--project=p",
    "--region=europe-west4",
    "--temp_location=gs://b/tmp",
]


def _fake_bin(tmp_path, monkeypatch, *names):
    """Puts recording stand-ins for `names` alone on PATH; returns the file their calls go to."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "calls.jsonl"
    for name in names:
        script = bin_dir / name
        script.write_text(
            f"#!{sys.executable}\n"
            "import json, os, sys\n"
            f"with open({str(log)!r}, 'a') as f:\n"
            f"    f.write(json.dumps([{name!r}, *sys.argv[1:]]) + '\\n')\n"
            "sys.exit(int(os.environ.get('FAKE_EXIT', '0')))\n"
        )
        script.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    return log


def _calls(log):
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


_BAD_FLAGS = [
    (_BACKENDS["local"] + ["--num_workers=0"], "--num_workers=0"),
    (_BACKENDS["local"] + ["--module=not a module"], "--module"),
    (_BACKENDS["local"] + ["--env=NOEQUALS"], "--env"),
    (_BACKENDS["local"] + ["--experiment=nope"], "--experiment='nope' is not registered"),
    (_BACKENDS["local"] + ["--config_file=/no/such.yaml"], "--config_file"),
    (_BACKENDS["local"] + ["--params_override=model.unitz=3"], "--params_override"),
    (_BACKENDS["local"] + ["--bogus=1"], "unrecognized arguments: --bogus=1"),
    (_BACKENDS["kubernetes"] + ["--job_name=Bad_Name"], "--job_name='Bad_Name'"),
    (_BACKENDS["kubernetes"] + ["--cpu=lots"], "--cpu='lots'"),
    (_BACKENDS["kubernetes"] + ["--gpus=-1"], "--gpus=-1"),
    (_BACKENDS["vertex"] + ["--base_output_dir=/local"], "--base_output_dir='/local'"),
    (_BACKENDS["vertex"] + ["--accelerator_type=NVIDIA_TESLA_T4"], "--accelerator_count"),
    (_BACKENDS["tpu"] + ["--tpu_name=-x"], "--tpu_name"),
    (_BACKENDS["tpu"] + ["--accelerator_type=v9x-8"], "--accelerator_type: accelerator type"),
    (_BACKENDS["tpu"] + ["--runtime_version=tpu-ubuntu2204-base"], "carries no TensorFlow"),
    (_BACKENDS["tpu"] + ["--data_dir=/local/data"], "--data_dir (on a multi-host slice)"),
    (_DATAFLOW + ["--temp_location=/tmp"], "--temp_location='/tmp' must be a gs:// path"),
    (_DATAFLOW + ["--setup_file=/no/setup.py"], "--setup_file"),
]


@pytest.mark.parametrize(("argv", "message"), _BAD_FLAGS, ids=[m for _, m in _BAD_FLAGS])
def test_bad_flag_exits_2_naming_it_before_any_work(argv, message, tmp_path, monkeypatch, capsys):
    log = _fake_bin(tmp_path, monkeypatch, "kubectl", "gcloud")
    with pytest.raises(SystemExit) as exit_info:
        main.run(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert _calls(log) == []


@pytest.mark.parametrize("backend", sorted(_BACKENDS))
def test_dry_run_runs_nothing_and_never_prints_a_secret(
    backend, tmp_path, monkeypatch, capsys, caplog
):
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    log = _fake_bin(tmp_path, monkeypatch, "kubectl", "gcloud")
    argv = _BACKENDS[backend] + ["--dry_run", "--env=HF_TOKEN=s3cret", "--env=LANG=C.UTF-8"]
    assert main.run(argv) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out + caplog.text
    assert "HF_TOKEN" in out and "C.UTF-8" in out
    assert _calls(log) == []
    assert list(tmp_path.iterdir()) == [tmp_path / "bin"]  # Nothing written.


def test_dry_run_outputs_are_machine_readable(capsys):
    main.run(_BACKENDS["kubernetes"] + ["--dry_run", "--num_workers=2"])
    kinds = [doc["kind"] for doc in yaml.safe_load_all(capsys.readouterr().out)]
    assert kinds == ["ConfigMap", "TFJob"]
    main.run(_BACKENDS["vertex"] + ["--dry_run"])
    body = json.loads(capsys.readouterr().out)
    (pool,) = body["jobSpec"]["workerPoolSpecs"]
    assert "--model_dir=gs://b/out/model" in pool["containerSpec"]["args"]


def test_dataflow_passes_beam_options_through(capsys):
    assert (
        main.run(_DATAFLOW + ["--dry_run", "--max_num_workers=8", "--experiments=use_runner_v2"])
        == 0
    )
    (line,) = capsys.readouterr().out.splitlines()
    assert "-m preprocessing.main" in line and "--runner=DataflowRunner" in line
    assert line.endswith("--max_num_workers=8 --experiments=use_runner_v2")
    assert "--job_name=nmt-preprocess-" in line and "setup.py" in line


def test_tpu_runs_gcloud_steps_in_order_and_stops_at_a_failure(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    log = _fake_bin(tmp_path, monkeypatch, "gcloud")
    assert main.run(_BACKENDS["tpu"]) == 0
    steps = [call[4] for call in _calls(log)]
    assert steps == ["create", "scp", "ssh"]
    local_config = tmp_path / "nmt-launch-nmt-v4" / "config.yaml"
    assert "strategy: tpu" in local_config.read_text()
    assert _calls(log)[1][5] == str(local_config)

    log.unlink()
    monkeypatch.setenv("FAKE_EXIT", "1")
    assert main.run(_BACKENDS["tpu"] + ["--skip_create"]) == 1
    assert [call[4] for call in _calls(log)] == ["scp"]
    assert "Exit code 1 from: gcloud compute tpus tpu-vm scp" in caplog.text


def test_vertex_without_the_client_library_fails_naming_the_package(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "google.cloud.aiplatform_v1", None)  # Makes import fail.
    assert main.run(_BACKENDS["vertex"]) == 1
    assert "google-cloud-aiplatform" in caplog.text and "--dry_run" in caplog.text


def test_vertex_uploads_the_config_and_creates_the_printed_job(monkeypatch, capsys):
    created = {}

    class Blob:
        def __init__(self, bucket, path):
            self.where = f"gs://{bucket}/{path}"

        def upload_from_string(self, text, content_type):
            created["upload"] = (self.where, text)

    storage = types.SimpleNamespace(
        Client=lambda project: types.SimpleNamespace(
            bucket=lambda name: types.SimpleNamespace(blob=lambda path: Blob(name, path))
        )
    )

    class JobServiceClient:
        def __init__(self, client_options):
            created["endpoint"] = client_options["api_endpoint"]

        def create_custom_job(self, parent, custom_job):
            created["request"] = (parent, custom_job)
            return types.SimpleNamespace(name=f"{parent}/customJobs/1")

    aiplatform = types.SimpleNamespace(
        JobServiceClient=JobServiceClient,
        CustomJob=types.SimpleNamespace(from_json=json.loads),
    )
    monkeypatch.setitem(sys.modules, "google.cloud.aiplatform_v1", aiplatform)
    monkeypatch.setitem(sys.modules, "google.cloud.storage", storage)
    assert main.run(_BACKENDS["vertex"] + ["--dry_run"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert main.run(_BACKENDS["vertex"]) == 0
    assert created["endpoint"] == "us-central1-aiplatform.googleapis.com"
    assert created["request"] == ("projects/p/locations/us-central1", printed)
    where, text = created["upload"]
    assert where == "gs://b/out/config/config.yaml"
    assert (
        f"--config_file={where}"
        in printed["jobSpec"]["workerPoolSpecs"][0]["containerSpec"]["args"]
    )
    assert "data_dir: gs://b/data" in text


def test_tpu_runtime_carries_the_locked_tensorflow_and_one_host_runs_locally(capsys):
    """The software version names the TensorFlow of requirements.lock; v4-8 needs no gs:// paths."""
    lock = os.path.join(os.path.dirname(__file__), "..", "..", "requirements.lock")
    with open(lock, encoding="utf-8") as f:
        locked = next(line.split("==")[1].strip() for line in f if line.startswith("tensorflow=="))
    assert locked == tpu_vm.TENSORFLOW_VERSION
    argv = ["tpu", "--dry_run", "--experiment=attention_seq2seq/tiny", "--data_dir=/data"]
    argv += ["--model_dir=/runs", "--tpu_name=one", "--zone=z", "--accelerator_type=v4-8"]
    assert main.run(argv) == 0
    create, scp, ssh = capsys.readouterr().out.splitlines()
    assert f"--version=tpu-vm-tf-{locked}-pjrt" in create
    assert "--tpu=local" in ssh and "--worker=0" in scp and "--worker=0" in ssh


@pytest.mark.parametrize(
    "accelerator, hosts",
    [("v2-8", 1), ("v3-32", 4), ("v4-8", 1), ("v4-32", 4), ("v5litepod-16", 2)],
)
def test_tpu_host_count_picks_the_pod_software_version(accelerator, hosts):
    assert tpu_vm.hosts(accelerator) == hosts
    assert ("-pod-" in tpu_vm.default_runtime_version(accelerator)) == (hosts > 1)
