"""Strategy choice, chief detection and the TPU path.

No TPU exists here: the TPU test replaces TensorFlow's TPU resolver, cluster connection, TPU
system initialisation, TPUStrategy and the cloud-tpu-client with recording fakes, and checks
that `trainer.tpu` calls them in the order a real TPU needs.
"""

import json
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
