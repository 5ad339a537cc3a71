"""Strategy choice, chief detection and the TPU path.

No TPU exists here: the TPU test replaces TensorFlow's TPU resolver, cluster connection, TPU
system initialisation, TPUStrategy and the cloud-tpu-client with recording fakes, and checks
that `trainer.tpu` calls them in the order a real TPU needs.
"""

import json
import subprocess
import sys
import types

import cloud_tpu_client  # noqa: F401  (the fake client is attached to the real package)
import pytest
import tensorflow as tf

from pipeline import config
from trainer import distribution, tpu


def _runtime(**changes):
    return config.merge(config.RuntimeConfig(), changes, "test")


def test_auto_is_one_device_without_a_cluster(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    strategy = distribution.build_strategy(_runtime())
    assert isinstance(strategy, tf.distribute.OneDeviceStrategy)
    assert distribution.is_chief(strategy)


@pytest.mark.parametrize(
    "cores, overrides, replicas",
    [
        (2, "", 2),
        (1, "", 1),
        (8, "", 2),
        (2, "train.jit_compile=true", 1),
        (2, "data.batch_size=63", 1),
        (2, "runtime.cpu_replicas=1", 1),
        (1, "runtime.cpu_replicas=4", 4),
    ],
)
def test_cpu_replicas_auto_and_explicit(monkeypatch, cores, overrides, replicas):
    monkeypatch.setattr(distribution, "_host_cores", lambda: cores)
    cfg = config.build_config("attention_seq2seq/base", params_override=overrides)
    assert distribution.cpu_replicas(cfg) == replicas


def test_cpu_replicas_fall_back_to_one_device_once_tensorflow_is_initialised(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    tf.constant(1.0)  # this test process has initialised its devices already
    strategy = distribution.build_strategy(_runtime(), host_cpu_replicas=2)
    assert isinstance(strategy, tf.distribute.OneDeviceStrategy)


def test_cpu_replicas_split_the_host_in_a_fresh_process():
    """Two logical CPUs, one intra-op thread each on 2 cores, and a step that sums both halves."""
    script = """
import json, os, tensorflow as tf
from pipeline import config
from trainer import distribution
distribution._host_cores = lambda: 2
strategy = distribution.build_strategy(config.RuntimeConfig(), host_cpu_replicas=2)
per_replica = strategy.run(lambda: tf.distribute.get_replica_context().replica_id_in_sync_group + 1)
total = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
print(json.dumps({
    "type": type(strategy).__name__,
    "devices": list(strategy.extended.worker_devices),
    "intra": tf.config.threading.get_intra_op_parallelism_threads(),
    "sum": int(total),
}))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["type"] == "MirroredStrategy"
    assert [d.split("/")[-1] for d in out["devices"]] == ["device:CPU:0", "device:CPU:1"]
    assert out["intra"] == 1 and out["sum"] == 3


@pytest.mark.parametrize(
    "cluster, workers",
    [
        ({"worker": ["a:1", "b:2"]}, 2),
        ({"chief": ["c:0"], "worker": ["a:1"]}, 2),
        ({"worker": ["a:1"]}, 1),
        ({}, 0),
    ],
)
def test_cluster_size_counts_chief_and_workers(monkeypatch, cluster, workers):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster}))
    assert distribution._cluster_workers() == workers


class _Resolver:
    def __init__(self, task_type, task_id, cluster):
        self.task_type, self.task_id, self._cluster = task_type, task_id, cluster

    def cluster_spec(self):
        return tf.train.ClusterSpec(self._cluster)


@pytest.mark.parametrize(
    "task_type, task_id, cluster, chief",
    [
        ("worker", 0, {"worker": ["a:1", "b:2"]}, True),
        ("worker", 1, {"worker": ["a:1", "b:2"]}, False),
        ("chief", 0, {"chief": ["c:0"], "worker": ["a:1"]}, True),
        ("worker", 0, {"chief": ["c:0"], "worker": ["a:1"]}, False),
    ],
)
def test_only_the_chief_writes(task_type, task_id, cluster, chief, tmp_path):
    strategy = types.SimpleNamespace(cluster_resolver=_Resolver(task_type, task_id, cluster))
    assert distribution.is_chief(strategy) is chief
    target = str(tmp_path / "checkpoints")
    written = distribution.write_dir(target, strategy)
    assert (written == target) is chief


def test_tpu_strategy_resolves_connects_initialises_in_order(monkeypatch):
    """Mocked: TPUClusterResolver, connect, initialize_tpu_system, TPUStrategy, cloud-tpu-client."""
    calls = []

    class FakeResolver:
        def __init__(self, tpu):
            calls.append(("resolve", tpu))

    class FakeClient:
        def __init__(self, tpu, zone, project):
            calls.append(("client", tpu))

        def state(self):
            return "READY"

        def health(self):
            return "HEALTHY"

    monkeypatch.setattr(tf.distribute.cluster_resolver, "TPUClusterResolver", FakeResolver)
    monkeypatch.setattr(
        tf.config, "experimental_connect_to_cluster", lambda r: calls.append(("connect", r))
    )
    monkeypatch.setattr(
        tf.tpu.experimental, "initialize_tpu_system", lambda r: calls.append(("init", r))
    )
    monkeypatch.setattr(
        tf.distribute,
        "TPUStrategy",
        lambda r: types.SimpleNamespace(resolver=r, num_replicas_in_sync=8),
    )
    fake_module = types.ModuleType("cloud_tpu_client.client")
    fake_module.Client = FakeClient
    monkeypatch.setitem(sys.modules, "cloud_tpu_client.client", fake_module)
    monkeypatch.setattr(sys.modules["cloud_tpu_client"], "client", fake_module, raising=False)

    strategy = distribution.build_strategy(_runtime(strategy="tpu", tpu="my-tpu"))
    assert [c[0] for c in calls] == ["resolve", "client", "connect", "init"]
    assert calls[0] == ("resolve", "my-tpu") and strategy.num_replicas_in_sync == 8

    calls.clear()
    tpu.build_tpu_strategy("local")
    assert [c[0] for c in calls] == ["resolve", "connect", "init"], "a TPU VM has no node API"
    assert calls[0] == ("resolve", "local")
