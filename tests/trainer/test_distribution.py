"""Strategy choice for every host kind, exactly one writer, the TPU connection and `resolve`.

No GPU or TPU exists here. Host kinds are faked at the one place device lists are read,
`distribution.inspect_host`; GPU strategies are built over device names that do not exist (building
them places nothing). The TPU tests replace TensorFlow's TPU resolver, connection, TPU system
initialisation and TPUStrategy, and cloud-tpu-client, with fakes that record what they were asked.
"""

import json
import logging
import subprocess
import sys
import types

import cloud_tpu_client  # noqa: F401  (the fake client is attached to the real package)
import pytest
import tensorflow as tf

from pipeline import config
from trainer import distribution, precision, tpu

TPU_VM = distribution.Host(tpu_chips=True, cores=96)
TPU_POD_WORKER0 = distribution.Host(tpu_chips=True, tpu_name="nmt-v4-32", cores=96)
ONE_GPU = distribution.Host(gpus=1, nvidia_devices=1, cores=8)
FOUR_GPUS = distribution.Host(gpus=4, nvidia_devices=4, cores=32)
CPU_ONLY = distribution.Host(cores=2)
TF_CONFIG_CLUSTER = distribution.Host(cluster_workers=3, cores=8)


def _runtime(**changes):
    return config.merge(config.RuntimeConfig(), changes, "test")


@pytest.mark.parametrize(
    "host, cpu_replicas, name",
    [
        (TPU_VM, 1, "tpu"),
        (TPU_POD_WORKER0, 1, "tpu"),
        (ONE_GPU, 2, "one_device"),
        (FOUR_GPUS, 2, "mirrored"),
        (CPU_ONLY, 2, "cpu_mirrored"),
        (CPU_ONLY, 1, "one_device"),
        (TF_CONFIG_CLUSTER, 2, "multi_worker_mirrored"),
    ],
)
def test_auto_picks_the_accelerator_of_each_host_kind(host, cpu_replicas, name):
    assert distribution.choose_strategy(_runtime(), host, cpu_replicas) == name


def test_a_named_tpu_or_an_explicit_strategy_wins():
    assert distribution.choose_strategy(_runtime(tpu="node-1"), CPU_ONLY, 2) == "tpu"
    assert distribution.choose_strategy(_runtime(strategy="one_device"), FOUR_GPUS, 2) == (
        "one_device"
    )


@pytest.mark.parametrize(
    "host, strategy_type, devices",
    [
        (ONE_GPU, tf.distribute.OneDeviceStrategy, ["GPU:0"]),
        (FOUR_GPUS, tf.distribute.MirroredStrategy, ["GPU:0", "GPU:1", "GPU:2", "GPU:3"]),
        (distribution.Host(cores=1), tf.distribute.OneDeviceStrategy, ["CPU:0"]),
    ],
)
def test_gpu_hosts_train_on_their_gpus_with_one_writer(host, strategy_type, devices, monkeypatch):
    monkeypatch.setattr(distribution, "inspect_host", lambda: host)
    cfg = config.build_config("attention_seq2seq/base")
    strategy = distribution.build_strategy(cfg.runtime, distribution.cpu_replicas(cfg))
    assert isinstance(strategy, strategy_type)
    assert [d.split("device:")[-1] for d in strategy.extended.worker_devices] == devices
    assert distribution.device_kind(strategy) == ("gpu" if host.gpus else "cpu")
    assert distribution.is_chief(strategy), "a single-process job: its one process writes"


def test_explicit_mirrored_on_a_cpu_host_mirrors_the_local_devices():
    strategy = distribution.build_strategy(_runtime(strategy="mirrored"), host=CPU_ONLY)
    assert distribution.device_kind(strategy) == "cpu" and strategy.num_replicas_in_sync == 1


def test_gpus_tensorflow_cannot_use_are_reported(caplog):
    caplog.set_level(logging.WARNING)
    distribution.build_strategy(_runtime(), host=distribution.Host(nvidia_devices=2))
    assert "sees none" in caplog.text and "requirements-gpu.lock" in caplog.text


@pytest.mark.parametrize(
    "cores, overrides, replicas",
    [
        (2, "", 2),
        (1, "", 1),
        (8, "", 2),
        (2, "train.jit_compile=true", 1),
        (2, "data.batch_size=63", 1),
        (2, "data.batch_size=63,data.per_replica_batch_size=21", 2),
        (2, "runtime.cpu_replicas=1", 1),
        (1, "runtime.cpu_replicas=4", 4),
    ],
)
def test_cpu_replicas_auto_and_explicit(monkeypatch, cores, overrides, replicas):
    monkeypatch.setattr(distribution, "_host_cores", lambda: cores)
    cfg = config.build_config("attention_seq2seq/base", params_override=overrides)
    assert distribution.cpu_replicas(cfg) == replicas


def test_cpu_replicas_fall_back_to_one_device_once_tensorflow_is_initialised():
    tf.constant(1.0)  # this test process has initialised its devices already
    strategy = distribution.build_strategy(_runtime(), host_cpu_replicas=2, host=CPU_ONLY)
    assert isinstance(strategy, tf.distribute.OneDeviceStrategy)


def test_cpu_replicas_split_the_host_in_a_fresh_process():
    """Two logical CPUs, one intra-op thread each on 2 cores, and a step that sums both halves."""
    script = """
import json, os, tensorflow as tf
from pipeline import config
from trainer import distribution
host = distribution.Host(cores=2)
strategy = distribution.build_strategy(config.RuntimeConfig(), host_cpu_replicas=2, host=host)
per_replica = strategy.run(lambda: tf.distribute.get_replica_context().replica_id_in_sync_group + 1)
total = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
print(json.dumps({
    "type": type(strategy).__name__,
    "devices": list(strategy.extended.worker_devices),
    "intra": tf.config.threading.get_intra_op_parallelism_threads(),
    "sum": int(total),
    "chief": distribution.is_chief(strategy),
}))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["type"] == "MirroredStrategy"
    assert [d.split("/")[-1] for d in out["devices"]] == ["device:CPU:0", "device:CPU:1"]
    assert out["intra"] == 1 and out["sum"] == 3 and out["chief"]


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
    assert distribution.inspect_host().cluster_workers == workers


@pytest.mark.parametrize(
    "cluster",
    [
        {"worker": ["a:1", "b:2", "c:3"]},
        {"chief": ["c:0"], "worker": ["a:1", "b:2"]},
    ],
)
def test_a_tf_config_cluster_has_exactly_one_writer(cluster, monkeypatch, tmp_path):
    """Each task's view of TF_CONFIG, as MultiWorkerMirroredStrategy's resolver reads it."""
    writers = []
    for task_type, addresses in cluster.items():
        for task_id in range(len(addresses)):
            tf_config = {"cluster": cluster, "task": {"type": task_type, "index": task_id}}
            monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
            resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
            strategy = types.SimpleNamespace(cluster_resolver=resolver)
            target = str(tmp_path / "checkpoints")
            chief = distribution.is_chief(strategy)
            assert (distribution.write_dir(target, strategy) == target) is chief
            writers += [(task_type, task_id)] if chief else []
    assert writers == ([("chief", 0)] if "chief" in cluster else [("worker", 0)])


class _FakeTpu:
    """Records TPUClusterResolver, connect, initialise, TPUStrategy and cloud-tpu-client calls."""

    def __init__(self, monkeypatch, node_version=tf.__version__, workers=4):
        self.calls = []
        calls = self.calls

        class Resolver:
            def __init__(self, tpu):
                calls.append(("resolve", tpu))
                self.task_type, self.task_id = "worker", 0
                self._workers = [f"10.0.0.{i}:8470" for i in range(workers)]

            def cluster_spec(self):
                return tf.train.ClusterSpec({"worker": self._workers})

        class Client:
            def __init__(self, tpu, zone, project):
                calls.append(("node", tpu))

            def state(self):
                return "READY"

            def health(self):
                return "HEALTHY"

            def wait_for_healthy(self, timeout_s):
                calls.append(("wait_for_healthy", timeout_s))

            def runtime_version(self):
                return node_version

        monkeypatch.setattr(tf.distribute.cluster_resolver, "TPUClusterResolver", Resolver)
        monkeypatch.setattr(
            tf.config, "experimental_connect_to_cluster", lambda r: calls.append(("connect",))
        )
        monkeypatch.setattr(
            tf.tpu.experimental, "initialize_tpu_system", lambda r: calls.append(("init",))
        )
        monkeypatch.setattr(
            tf.distribute,
            "TPUStrategy",
            lambda r: types.SimpleNamespace(cluster_resolver=r, num_replicas_in_sync=4 * workers),
        )
        client_module = types.ModuleType("cloud_tpu_client.client")
        client_module.Client = Client
        monkeypatch.setitem(sys.modules, "cloud_tpu_client.client", client_module)
        monkeypatch.setattr(sys.modules["cloud_tpu_client"], "client", client_module, raising=False)

    def kinds(self):
        return [call[0] for call in self.calls]


def test_tpu_vm_uses_its_own_chips_and_no_node_api(monkeypatch):
    fake = _FakeTpu(monkeypatch, workers=1)
    strategy = distribution.build_strategy(_runtime(), host=TPU_VM)
    assert fake.calls[0] == ("resolve", "local")
    assert fake.kinds() == ["resolve", "connect", "init"], "cloud-tpu-client is for TPU Nodes"
    assert distribution.is_chief(strategy)


def test_tpu_pod_worker0_resolves_the_slice_by_name_and_is_the_one_writer(monkeypatch):
    fake = _FakeTpu(monkeypatch, workers=4)
    strategy = distribution.build_strategy(_runtime(strategy="tpu", tpu="nmt-v4-32"), host=TPU_VM)
    assert fake.calls[0] == ("resolve", "nmt-v4-32") and "node" not in fake.kinds()
    assert strategy.num_replicas_in_sync == 16
    assert distribution.is_chief(strategy), "the only process: nmt-launch runs it on worker 0"


def test_tpu_node_is_checked_for_health_and_tensorflow_version(monkeypatch):
    fake = _FakeTpu(monkeypatch)
    distribution.build_strategy(_runtime(tpu="old-node"), host=CPU_ONLY)
    assert fake.kinds() == ["node", "wait_for_healthy", "resolve", "connect", "init"]

    _FakeTpu(monkeypatch, node_version="2.12.0")
    with pytest.raises(
        RuntimeError, match=f"runs TensorFlow 2.12.0 but this trainer runs {tf.__version__}"
    ):
        tpu.build_tpu_strategy("old-node", on_tpu_vm=False)


def _pci_device(root, slot: str, vendor: str, device: str):
    path = root / "sys" / "bus" / "pci" / "devices" / slot
    path.mkdir(parents=True)
    (path / "vendor").write_text(vendor + "\n")
    (path / "device").write_text(device + "\n")


def test_tpu_vm_is_recognised_by_a_tpu_chip_on_its_pci_bus(tmp_path):
    """A fake /sys tree: no TPU exists here. gVNIC shares Google's vendor id and must not count,
    nor an Intel NPU's /dev/accel0."""
    assert not tpu.host_has_tpu_chips(str(tmp_path))
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "accel0").touch()
    _pci_device(tmp_path, "0000:00:04.0", "0x1ae0", "0x0042")  # gVNIC
    _pci_device(tmp_path, "0000:00:05.0", "0x8086", "0x005e")
    assert not tpu.host_has_tpu_chips(str(tmp_path))
    _pci_device(tmp_path, "0000:00:06.0", "0x1ae0", "0x005e")  # TPU v4
    assert tpu.host_has_tpu_chips(str(tmp_path))


@pytest.mark.parametrize(
    "overrides, replicas, kind, batch, jit, encoder",
    [
        ("", 1, "cpu", 64, False, "fused"),
        ("", 2, "gpu", 64, False, "keras"),
        ("data.per_replica_batch_size=32", 8, "tpu", 256, True, "fused"),
        ("data.per_replica_batch_size=32", 4, "gpu", 128, False, "keras"),
        ("train.jit_compile=true", 1, "gpu", 64, True, "fused"),
        ("train.mixed_precision=mixed_bfloat16", 1, "gpu", 64, False, "fused"),
        ("train.mixed_precision=mixed_float16", 1, "gpu", 64, False, "keras"),
        ("model.layer_norm=true", 1, "gpu", 64, False, "fused"),
        ("model.encoder_lstm=keras", 1, "cpu", 64, False, "keras"),
    ],
)
def test_resolve_decides_global_batch_xla_and_encoder_in_one_place(
    overrides, replicas, kind, batch, jit, encoder
):
    cfg = config.build_config("attention_seq2seq/base", params_override=overrides)
    resolved = distribution.resolve(cfg, replicas, kind)
    assert resolved.data.batch_size == batch
    assert resolved.train.jit_compile is jit
    assert resolved.model.encoder_lstm == encoder
    assert distribution.resolve(resolved, replicas, kind) == resolved, "resolving is idempotent"


def test_resolve_refuses_a_batch_that_does_not_split():
    cfg = config.build_config("attention_seq2seq/base", params_override="data.batch_size=60")
    with pytest.raises(config.ConfigError, match="batch_size=60 must be divisible by the 8"):
        distribution.resolve(cfg, 8, "tpu")


def test_keras_encoder_is_refused_under_xla():
    with pytest.raises(config.ConfigError, match="recompiles every step"):
        config.build_config(
            "attention_seq2seq/base",
            params_override="model.encoder_lstm=keras,train.jit_compile=true",
        )
    cfg = config.build_config("attention_seq2seq/base", params_override="model.encoder_lstm=keras")
    with pytest.raises(config.ConfigError, match="recompiles every step"):
        distribution.resolve(cfg, 8, "tpu")


def test_the_default_strategy_counts_as_cpu():
    """bench/decode.py and tests build trainers under it; its choices stay the portable ones."""
    assert distribution.device_kind(tf.distribute.get_strategy()) == "cpu"


@pytest.mark.parametrize(
    "flags, policy", [({"avx2"}, "float32"), ({"avx2", "avx512_bf16"}, "mixed_bfloat16")]
)
def test_auto_precision_follows_the_hosts_cpu_flags(flags, policy, monkeypatch):
    """The CPU flags are read once, by `inspect_host`, like the device lists."""
    monkeypatch.setattr(
        distribution, "inspect_host", lambda: distribution.Host(cores=2, cpu_flags=frozenset(flags))
    )
    cfg = config.build_config("attention_seq2seq/base")
    resolved = distribution.for_strategy(cfg, tf.distribute.get_strategy())
    assert resolved.train.mixed_precision == policy


def test_inspect_host_reads_this_hosts_cpu_flags():
    assert distribution.inspect_host().cpu_flags == precision.cpu_flags()
