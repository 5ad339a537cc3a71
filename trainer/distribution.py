"""The one place the distribution strategy is chosen, what follows from it, and who writes.

- `inspect_host` reads what this process can see (GPUs, TPU chips, TF_CONFIG) once, at start-up;
  nothing else reads device lists, so tests fake this one function.
- `choose_strategy` maps the config and the host to a strategy name; `build_strategy` creates it.
- `for_strategy` derives the config values that depend on it: the precision 'auto' picks, the
  global batch, XLA under TPUs, the encoder's LSTM implementation.
- `is_chief` / `write_dir`: exactly one process writes.

Create the strategy before any other TF op: MultiWorkerMirroredStrategy must configure the
collective runtime first (README, "Known traps"). Nothing here runs per step.
"""

import contextlib
import dataclasses
import glob
import json
import os
import tempfile

import tensorflow as tf
from absl import logging

from pipeline import config as config_lib
from trainer import precision, tpu

# The coordinator's own CPU; under TPUStrategy evaluation and decoding run there (see
# `evaluation_scope`).
HOST_CPU = "/job:localhost/replica:0/task:0/device:CPU:0"


@dataclasses.dataclass(frozen=True)
class Host:
    """What this process can see; read once by `inspect_host`."""

    gpus: int = 0  # GPUs TensorFlow can use
    nvidia_devices: int = 0  # /dev/nvidiaN: GPUs the driver sees, whether TensorFlow can or not
    tpu_chips: bool = False  # this is a TPU VM
    tpu_name: str = ""  # $TPU_NAME
    cluster_workers: int = 0  # chief + workers in TF_CONFIG
    cores: int = 1
    gpu_capability: tuple | None = None  # (major, minor) compute capability of the first GPU
    cpu_flags: frozenset = frozenset()  # the CPU's feature flags (/proc/cpuinfo)


def _cluster_workers() -> int:
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    return sum(len(cluster.get(role, [])) for role in ("chief", "worker"))


def _host_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _gpu_capability(gpus: list) -> tuple | None:
    if not gpus:
        return None
    return tf.config.experimental.get_device_details(gpus[0]).get("compute_capability")


def inspect_host() -> Host:
    """The accelerators, cluster, cores and CPU flags of this host: the one place they are read."""
    gpus = tf.config.list_physical_devices("GPU")
    return Host(
        gpus=len(gpus),
        nvidia_devices=len(glob.glob("/dev/nvidia[0-9]*")),
        tpu_chips=tpu.host_has_tpu_chips(),
        tpu_name=os.environ.get("TPU_NAME", ""),
        cluster_workers=_cluster_workers(),
        cores=_host_cores(),
        gpu_capability=_gpu_capability(gpus),
        cpu_flags=precision.cpu_flags(),
    )


def cpu_replicas(cfg: config_lib.ExperimentConfig) -> int:
    """How many replicas `auto` runs on a host with no accelerator (see RuntimeConfig)."""
    if cfg.runtime.cpu_replicas:
        return cfg.runtime.cpu_replicas
    if cfg.train.jit_compile:  # XLA cannot run a step whose variables span logical devices
        return 1
    splits_evenly = cfg.data.per_replica_batch_size or cfg.data.batch_size % 2 == 0
    return 2 if _host_cores() >= 2 and splits_evenly else 1


def choose_strategy(runtime: config_lib.RuntimeConfig, host: Host, host_cpu_replicas: int) -> str:
    """The strategy name for this host: `runtime.strategy`, or for `auto`, in this order:

    a TPU (named by runtime.tpu or $TPU_NAME, or this VM's own chips) -> tpu; a TF_CONFIG cluster
    of 2+ workers -> multi_worker_mirrored; 2+ GPUs -> mirrored; 1 GPU -> one_device on it; no
    accelerator -> `host_cpu_replicas` CPU replicas (cpu_mirrored) or one_device.
    """
    if runtime.strategy != "auto":
        return runtime.strategy
    if runtime.tpu or host.tpu_name or host.tpu_chips:
        return "tpu"
    if host.cluster_workers > 1:
        return "multi_worker_mirrored"
    if host.gpus > 1:
        return "mirrored"
    if host.gpus == 0 and host_cpu_replicas > 1:
        return "cpu_mirrored"
    return "one_device"


def _cpu_mirrored(replicas: int, cores: int) -> tf.distribute.Strategy:
    """`replicas` logical CPUs, each op on one share of the cores, gradients summed in memory.

    The decoder loops are chains of small ops that leave a second core idle; two half-batch
    replicas keep both busy (on 2 cores: +10% float32, +6% bfloat16 tokens/s, bench/train.py).
    Must run before TensorFlow initialises its devices.
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.threading.set_intra_op_parallelism_threads(max(1, cores // replicas))
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * replicas
        )
    except RuntimeError as e:  # TensorFlow already initialised (e.g. inside a test process)
        logging.warning("Cannot split the CPU into %d replicas (%s); using one.", replicas, e)
        return tf.distribute.OneDeviceStrategy("/cpu:0")
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(
        devices, cross_device_ops=tf.distribute.ReductionToOneDevice()
    )


def _warn_if_gpus_unusable(host: Host) -> None:
    if host.nvidia_devices and not host.gpus:
        logging.warning(
            "This host has %d NVIDIA GPU device(s) (/dev/nvidia*) but TensorFlow sees none, so "
            "training runs on the CPU. The plain tensorflow wheel has no CUDA libraries: install "
            "the GPU lock (pip install -r requirements-gpu.lock) or use docker/Dockerfile.gpu.",
            host.nvidia_devices,
        )


def build_strategy(
    runtime: config_lib.RuntimeConfig, host_cpu_replicas: int = 1, host: Host | None = None
) -> tf.distribute.Strategy:
    """Creates the strategy `choose_strategy` picks for this host (read now unless given)."""
    host = host or inspect_host()
    _warn_if_gpus_unusable(host)
    name = choose_strategy(runtime, host, host_cpu_replicas)
    if name == "tpu":
        target = runtime.tpu or host.tpu_name or "local"
        strategy = tpu.build_tpu_strategy(target, on_tpu_vm=host.tpu_chips)
    elif name == "cpu_mirrored":
        strategy = _cpu_mirrored(host_cpu_replicas, host.cores)
    elif name == "multi_worker_mirrored":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif name == "mirrored":
        gpus = [f"/gpu:{i}" for i in range(host.gpus)]
        strategy = tf.distribute.MirroredStrategy(gpus or None)  # None: every local device
    else:
        strategy = tf.distribute.OneDeviceStrategy("/gpu:0" if host.gpus else "/cpu:0")
    logging.info("Strategy %s with %d replicas.", name, strategy.num_replicas_in_sync)
    return strategy


def device_kind(strategy: tf.distribute.Strategy) -> str:
    """'tpu', 'gpu' or 'cpu': what the strategy's replicas run on."""
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "tpu"
    try:
        devices = strategy.extended.worker_devices
    except RuntimeError:  # the default strategy places nothing itself: keep the portable choices
        return "cpu"
    return "gpu" if any("GPU" in device.upper() for device in devices) else "cpu"


def resolve(
    cfg: config_lib.ExperimentConfig, replicas: int, kind: str
) -> config_lib.ExperimentConfig:
    """The config as `replicas` replicas on `kind` devices run it; the one place this is decided.

    - data.batch_size becomes the global batch: data.per_replica_batch_size x replicas when that
      is set, else as configured, and must split evenly.
    - Under TPUs the step is XLA-compiled (train.jit_compile), so shapes are static: batches are
      padded to bucket lengths and the loss keeps padding under a mask instead of dropping it.
    - model.encoder_lstm 'auto' becomes 'keras' (cuDNN) on GPUs in graph mode, else 'fused':
      under XLA a Keras LSTM recompiles every step, cuDNN has no layer norm, and bfloat16 needs
      the fused loop's float32 cell states.

    Raises:
      pipeline.config.ConfigError: the global batch does not split over the replicas.
    """
    data, train, model = cfg.data, cfg.train, cfg.model
    batch = (
        data.per_replica_batch_size * replicas if data.per_replica_batch_size else data.batch_size
    )
    if batch % replicas:
        raise config_lib.ConfigError(
            f"data.batch_size={batch} must be divisible by the {replicas} replicas in sync; or "
            "set data.per_replica_batch_size."
        )
    jit = train.jit_compile or kind == "tpu"
    if jit and not train.jit_compile:
        logging.info("TPU: the train step is XLA-compiled (train.jit_compile=true).")
    encoder_lstm = model.encoder_lstm
    if encoder_lstm == "auto":
        cudnn_ok = not (jit or model.layer_norm or train.mixed_precision == "mixed_bfloat16")
        encoder_lstm = "keras" if kind == "gpu" and cudnn_ok else "fused"
    updates = {
        "data": {"batch_size": batch},
        "train": {"jit_compile": jit},
        "model": {"encoder_lstm": encoder_lstm},
    }
    resolved = config_lib.validate(config_lib.merge(cfg, updates, where="strategy"))
    _log_batch(resolved, replicas)
    return resolved


def _log_batch(cfg: config_lib.ExperimentConfig, replicas: int) -> None:
    """States the global batch and, when it scales with the replicas, the learning-rate rule."""
    batch = cfg.data.batch_size
    logging.info(
        "Global batch %d sentence pairs = %d per replica x %d replicas.",
        batch,
        batch // replicas,
        replicas,
    )
    if cfg.data.per_replica_batch_size:
        logging.info(
            "train.learning_rate=%g is used as configured. Tuned at another global batch B0, "
            "Adam's square-root rule scales it by sqrt(%d / B0) (README, \"Batch size and "
            'learning rate").',
            cfg.train.learning_rate,
            batch,
        )


def for_strategy(
    cfg: config_lib.ExperimentConfig, strategy: tf.distribute.Strategy, host: Host | None = None
) -> config_lib.ExperimentConfig:
    """`resolve` for the replicas and devices of `strategy` on `host` (read now unless given).

    The precision is chosen first (`precision.choose`, from the device kind and the host's GPU
    capability or CPU flags) because the encoder's LSTM follows it: cuDNN cannot run the
    bfloat16 that 'auto' picks on an Ampere GPU. The config then names the policy itself.
    """
    kind = device_kind(strategy)
    host = host or inspect_host()
    choice = precision.choose(
        cfg.train.mixed_precision,
        kind,
        flags=host.cpu_flags if kind == "cpu" else frozenset(),
        gpu_capability=host.gpu_capability if kind == "gpu" else None,
    )
    logging.info("Precision %s.", choice.reason)
    cfg = config_lib.merge(cfg, {"train": {"mixed_precision": choice.policy}}, where="precision")
    return resolve(cfg, strategy.num_replicas_in_sync, kind)


def evaluation_scope(strategy: tf.distribute.Strategy):
    """Where evaluation and decoding run: under TPUStrategy, explicitly on the host CPU.

    Beam search (TFA's decoder loops stop on data, and gather_tree is a CPU/GPU kernel) does not
    compile for a TPU, and dev loss shares its batches, so both read the TPU-held weights and run
    on the coordinator. Elsewhere they run where the strategy's default device is.
    """
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return tf.device(HOST_CPU)
    return contextlib.nullcontext()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """The chief writes checkpoints, summaries, config and exports; other workers do not.

    Under TPUStrategy one client process drives every TPU host (`nmt-launch tpu` runs the
    trainer on worker 0 only) and its resolver is worker 0: the one writer.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def write_dir(directory: str, strategy: tf.distribute.Strategy) -> str:
    """`directory` on the chief; a private temporary directory elsewhere (Model Garden's pattern).

    Non-chief workers must still write checkpoints (saving is a collective op), but their files
    are throwaway.
    """
    if is_chief(strategy):
        return directory
    resolver = strategy.cluster_resolver
    return tempfile.mkdtemp(prefix=f"worker{resolver.task_id}-{os.path.basename(directory)}-")
