"""The TFJob and ConfigMap: validated against a schema written from the TFJob CRD, and applied.

The schema check uses a small validator for the JSON Schema keywords tfjob_schema.json uses, because
jsonschema is not in requirements.lock; the schema itself is standard draft-07 JSON Schema.
`kubectl` is replaced by a stand-in program on PATH (no cluster exists here).
"""

import json
import os
import re
import sys

import pytest
import yaml

from launch import commands, kubernetes, runner
from pipeline import config as config_lib
from pipeline import redact

SCHEMA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tfjob_schema.json")
_TYPES = {"object": dict, "array": list, "string": str, "integer": int, "boolean": bool}
_KEYWORDS = {
    "$schema", "$comment", "title", "description", "definitions", "$ref", "type", "required",
    "properties", "additionalProperties", "items", "enum", "const", "pattern", "minimum",
    "minItems", "minLength", "anyOf",
}  # fmt: skip


def _schema_errors(instance, schema, root, path="$") -> list[str]:
    """Errors of `instance` against `schema`, for the keywords in _KEYWORDS only."""
    unsupported = set(schema) - _KEYWORDS
    assert not unsupported, f"the test validator does not support {unsupported}"
    if "$ref" in schema:
        return _schema_errors(
            instance, root["definitions"][schema["$ref"].split("/")[-1]], root, path
        )
    expected = schema.get("type")
    if expected and (
        not isinstance(instance, _TYPES[expected])
        or (expected == "integer" and isinstance(instance, bool))
    ):
        return [f"{path}: expected {expected}, got {instance!r}"]
    errors = []
    if "const" in schema and instance != schema["const"]:
        errors.append(f"{path}: must be {schema['const']!r}, got {instance!r}")
    if "enum" in schema and instance not in schema["enum"]:
        errors.append(f"{path}: {instance!r} is not one of {schema['enum']}")
    if "pattern" in schema and not re.search(schema["pattern"], instance):
        errors.append(f"{path}: {instance!r} does not match {schema['pattern']}")
    if "minimum" in schema and instance < schema["minimum"]:
        errors.append(f"{path}: {instance} < {schema['minimum']}")
    shortest = schema.get("minItems", schema.get("minLength", 0))
    if isinstance(instance, list | str) and len(instance) < shortest:
        errors.append(f"{path}: shorter than {shortest}")
    if "anyOf" in schema and all(_schema_errors(instance, s, root, path) for s in schema["anyOf"]):
        errors.append(f"{path}: {instance!r} matches none of anyOf")
    if isinstance(instance, dict):
        errors += [
            f"{path}: missing {key!r}" for key in schema.get("required", ()) if key not in instance
        ]
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, value in instance.items():
            if key in properties:
                errors += _schema_errors(value, properties[key], root, f"{path}.{key}")
            elif extra is False:
                errors.append(f"{path}: unknown field {key!r}")
            elif isinstance(extra, dict):
                errors += _schema_errors(value, extra, root, f"{path}.{key}")
    if isinstance(instance, list) and "items" in schema:
        for index, item in enumerate(instance):
            errors += _schema_errors(item, schema["items"], root, f"{path}[{index}]")
    return errors


@pytest.fixture(scope="module")
def schema():
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        return json.load(f)


def _job(num_workers=2):
    return commands.build_trainer_job(
        "attention_seq2seq/tiny", "gs://b/run", data_dir="gs://b/data", num_workers=num_workers
    )


_SPECS = {
    "one replica, defaults": kubernetes.TFJobSpec(name="nmt", image="img:1"),
    "gpus, env, volume": kubernetes.TFJobSpec(
        name="nmt-gpu",
        image="img:1",
        namespace="team-a",
        num_workers=4,
        cpu="500m",
        memory="3.5Gi",
        gpus=2,
        env={"A": "1"},
        volume_claim="scratch",
    ),
}


@pytest.mark.parametrize("name", sorted(_SPECS))
def test_rendered_tfjob_satisfies_the_crd_schema(schema, name):
    spec = _SPECS[name]
    tfjob = kubernetes.render_tfjob(spec, _job(spec.num_workers))
    assert _schema_errors(tfjob, schema, schema) == []
    replicas = tfjob["spec"]["tfReplicaSpecs"]
    assert sum(r["replicas"] for r in replicas.values()) == spec.num_workers
    assert ("Worker" in replicas) == (spec.num_workers > 1)


def test_schema_check_catches_broken_manifests(schema):
    """The validator has teeth: each mutation is one mistake the cluster would not flag clearly."""
    good = kubernetes.render_tfjob(_SPECS["gpus, env, volume"], _job(4))
    mutations = {
        "container name": lambda t: t["spec"]["tfReplicaSpecs"]["Chief"]["template"]["spec"][
            "containers"
        ][0].update(name="trainer"),
        "restart policy": lambda t: t["spec"]["tfReplicaSpecs"]["Worker"].update(
            restartPolicy="Sometimes"
        ),
        "misspelt field": lambda t: t["spec"].update(tfReplicaSpec={}),
        "no containers": lambda t: t["spec"]["tfReplicaSpecs"]["Chief"]["template"]["spec"].pop(
            "containers"
        ),
        "quantity": lambda t: t["spec"]["tfReplicaSpecs"]["Chief"]["template"]["spec"][
            "containers"
        ][0]["resources"]["limits"].update(memory="lots"),
    }
    for name, mutate in mutations.items():
        broken = json.loads(json.dumps(good))
        mutate(broken)
        assert _schema_errors(broken, schema, schema), name


def test_config_map_ships_the_frozen_config_the_pods_read():
    spec = _SPECS["gpus, env, volume"]
    job = _job(4)
    config_map, tfjob = yaml.safe_load_all(kubernetes.render_manifests(spec, job))
    assert config_map["metadata"]["name"] == "nmt-gpu-config"
    shipped = config_map["data"][kubernetes.CONFIG_KEY]
    assert config_lib.from_dict(yaml.safe_load(shipped)) == job.config
    pod = tfjob["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if "configMap" in v]
    assert volume["configMap"]["name"] == "nmt-gpu-config"
    (container,) = pod["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    config_flag = f"--config_file={mount['mountPath']}/{kubernetes.CONFIG_KEY}"
    assert config_flag in container["command"]


def _fake_program(tmp_path, name: str) -> str:
    """A stand-in for a cloud CLI: records argv and stdin to <name>.calls, exits FAKE_EXIT."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / f"{name}.calls"
    script = bin_dir / name
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"with open({str(log)!r}, 'a') as f:\n"
        "    f.write(json.dumps({'argv': sys.argv[1:], 'stdin': sys.stdin.read()}) + '\\n')\n"
        "sys.exit(int(os.environ.get('FAKE_EXIT', '0')))\n"
    )
    script.chmod(0o755)
    return str(log)


def test_submit_pipes_manifests_to_kubectl_apply(tmp_path, monkeypatch):
    log = _fake_program(tmp_path, "kubectl")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    spec = kubernetes.TFJobSpec(name="nmt", image="img:1", env={"HF_TOKEN": "s3cret"})
    kubernetes.submit(spec, _job(), dry_run=False, out=sys.stdout)
    with open(log, encoding="utf-8") as f:
        (call,) = [json.loads(line) for line in f]
    assert call["argv"] == ["apply", "-f", "-"]
    assert call["stdin"] == kubernetes.render_manifests(spec, _job())
    assert "s3cret" in call["stdin"]  # The cluster gets the real value; only printing masks it.


def test_dry_run_prints_manifests_with_secrets_masked(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # No kubectl: a dry run must not need it.
    spec = kubernetes.TFJobSpec(name="nmt", image="img:1", env={"HF_TOKEN": "s3cret", "A": "1"})
    kubernetes.submit(spec, _job(), dry_run=True, out=sys.stdout)
    out = capsys.readouterr().out
    assert "s3cret" not in out and redact.REDACTED in out
    config_map, tfjob = yaml.safe_load_all(out)
    assert tfjob["kind"] == "TFJob" and config_map["kind"] == "ConfigMap"


def test_missing_or_failing_kubectl_is_a_clear_error(tmp_path, monkeypatch):
    spec = kubernetes.TFJobSpec(name="nmt", image="img:1")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(runner.LaunchError, match="'kubectl' was not found on PATH.*--dry_run"):
        kubernetes.submit(spec, _job(), dry_run=False, out=sys.stdout)
    _fake_program(tmp_path, "kubectl")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setenv("FAKE_EXIT", "1")
    with pytest.raises(runner.LaunchError, match="Exit code 1 from: kubectl apply -f -"):
        kubernetes.submit(spec, _job(), dry_run=False, out=sys.stdout)
