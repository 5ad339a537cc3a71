"""The one function that picks the distribution strategy, and chief-only write helpers.

Create the strategy before any other TF op: MultiWorkerMirroredStrategy must configure the
collective runtime first (README, "Known traps").
"""

import json
import os
import tempfile

import tensorflow as tf
from absl import logging

from pipeline import config as config_lib
from trainer import tpu


def _cluster_workers() -> int:
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    return sum(len(cluster.get(role, [])) for role in ("chief", "worker"))


def _host_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def cpu_replicas(cfg: config_lib.ExperimentConfig) -> int:
    """How many replicas `auto` runs on a host with no accelerator (see RuntimeConfig)."""
    if cfg.runtime.cpu_replicas:
        return cfg.runtime.cpu_replicas
    if cfg.train.jit_compile:  # XLA cannot run a step whose variables span logical devices
        return 1
    return 2 if _host_cores() >= 2 and cfg.data.batch_size % 2 == 0 else 1


def _cpu_mirrored(replicas: int) -> tf.distribute.Strategy:
    """`replicas` logical CPUs, each op on one share of the cores, gradients summed in memory.

    The decoder loops are chains of small ops that leave a second core idle; two half-batch
    replicas keep both busy (on 2 cores: +10% float32, +6% bfloat16 tokens/s, bench/train.py).
    Must run before TensorFlow initialises its devices.
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.threading.set_intra_op_parallelism_threads(max(1, _host_cores() // replicas))
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


def build_strategy(
    runtime: config_lib.RuntimeConfig, host_cpu_replicas: int = 1
) -> tf.distribute.Strategy:
    """auto: TF_CONFIG with several workers -> multi-worker; several GPUs -> mirrored; a host
    with no accelerator -> `host_cpu_replicas` (see `cpu_replicas`) replicas; else one device."""
    name = runtime.strategy
    if name == "auto":
        if _cluster_workers() > 1:
            name = "multi_worker_mirrored"
        elif len(tf.config.list_physical_devices("GPU")) > 1:
            name = "mirrored"
        elif host_cpu_replicas > 1 and not tf.config.list_physical_devices("GPU"):
            name = "cpu_mirrored"
        else:
            name = "one_device"
    if name == "cpu_mirrored":
        strategy = _cpu_mirrored(host_cpu_replicas)
    elif name == "tpu":
        strategy = tpu.build_tpu_strategy(runtime.tpu)
    elif name == "multi_worker_mirrored":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif name == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
    else:
        gpus = tf.config.list_logical_devices("GPU")
        strategy = tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    logging.info("Strategy %s with %d replicas.", name, strategy.num_replicas_in_sync)
    return strategy


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """The chief writes checkpoints, summaries, config and exports; other workers do not."""
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
