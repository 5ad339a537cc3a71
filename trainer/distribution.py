"""The one function that picks the distribution strategy, and chief-only write helpers.

Create the strategy before any other TF op: MultiWorkerMirroredStrategy must configure the
collective runtime first (DESIGN.md, known traps).
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


def build_strategy(runtime: config_lib.RuntimeConfig) -> tf.distribute.Strategy:
    """auto: TF_CONFIG with several workers -> multi-worker; several GPUs -> mirrored; else one."""
    name = runtime.strategy
    if name == "auto":
        if _cluster_workers() > 1:
            name = "multi_worker_mirrored"
        elif len(tf.config.list_physical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "one_device"
    if name == "tpu":
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
