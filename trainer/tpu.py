"""Every TPU-specific call lives here: resolve, connect, initialise, check the runtime.

No TPU exists on CI machines; tests cover this module with the resolver mocked and say so.
"""

import tensorflow as tf
from absl import logging


def check_tpu_runtime(tpu: str, zone: str | None = None, project: str | None = None) -> None:
    """Logs the TPU node's health through cloud-tpu-client (Cloud TPU nodes, not TPU VMs)."""
    from cloud_tpu_client import client as tpu_client  # Imported lazily: pulls in Google APIs.

    node = tpu_client.Client(tpu=tpu, zone=zone, project=project)
    logging.info("TPU %s: state=%s health=%s", tpu, node.state(), node.health())


def build_tpu_strategy(tpu: str) -> tf.distribute.TPUStrategy:
    """Connects to `tpu` ('local' on a TPU VM) and returns a TPUStrategy over all its cores."""
    name = "local" if tpu in ("", "local") else tpu
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=name)
    if name != "local":
        check_tpu_runtime(name)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
