"""Every TPU-specific call lives here: which TPU, connect, initialise, and a TPU Node's health.

Three ways a trainer meets a TPU (launch/README.md names Google's pages):
- a TPU VM with one host (v4-8): the chips are this VM's devices, `TPUClusterResolver("local")`;
- a TPU VM pod slice (v4-32): one process on worker 0 names the TPU, and the resolver asks the
  Cloud TPU API for every host's TensorFlow server;
- a TPU Node (the older architecture): this VM reaches the TPU over the network by name, like a
  pod slice. Only there does cloud-tpu-client's node API apply: the trainer checks that the node is
  healthy and runs this TensorFlow before connecting.

No TPU exists on CI machines: tests fake the resolver and the client, and say so.
"""

import glob
import os

import tensorflow as tf
from absl import logging

# A TPU chip is a PCI function of Google's vendor id with a TPU device id (v2/v3, v4, v5p, v5e,
# v6e). Device files alone mislead: /dev/accel* is also an Intel NPU, /dev/vfio/N any VFIO
# passthrough, and Google's vendor id also marks GCE's virtual NIC (device 0x0042).
_GOOGLE_PCI_VENDOR = "0x1ae0"
_TPU_PCI_DEVICES = frozenset({"0x0027", "0x005e", "0x0062", "0x0063", "0x006f"})
_NODE_HEALTHY_TIMEOUT_S = 600


def _read_id(path: str) -> str:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip().lower()
    except OSError:
        return ""


def host_has_tpu_chips(root: str = "/") -> bool:
    """Whether this machine is a TPU VM: a TPU chip is on its PCI bus."""
    for device in glob.glob(os.path.join(root, "sys/bus/pci/devices/*")):
        vendor = _read_id(os.path.join(device, "vendor"))
        if vendor == _GOOGLE_PCI_VENDOR and _read_id(os.path.join(device, "device")) in (
            _TPU_PCI_DEVICES
        ):
            return True
    return False


def check_tpu_node(name: str, zone: str | None = None, project: str | None = None) -> None:
    """Waits for TPU Node `name` to be healthy and checks it runs this TensorFlow.

    Raises:
      RuntimeError: the node stays unhealthy, or runs another TensorFlow version.
    """
    from cloud_tpu_client import client as tpu_client  # Imported lazily: pulls in Google APIs.

    node = tpu_client.Client(tpu=name, zone=zone, project=project)
    logging.info("TPU Node %s: state=%s health=%s", name, node.state(), node.health())
    node.wait_for_healthy(timeout_s=_NODE_HEALTHY_TIMEOUT_S)
    version = node.runtime_version()
    if version and version != tf.__version__:
        raise RuntimeError(
            f"TPU Node {name!r} runs TensorFlow {version} but this trainer runs {tf.__version__}: "
            f"recreate the node with --version={tf.__version__}, or use a TPU VM."
        )


def build_tpu_strategy(tpu: str, on_tpu_vm: bool) -> tf.distribute.TPUStrategy:
    """Connects to `tpu` and returns a TPUStrategy over all its cores.

    Args:
      tpu: 'local' (this TPU VM's chips) or the TPU's name (a pod slice or a TPU Node).
      on_tpu_vm: this machine is a TPU VM (`host_has_tpu_chips`); a named TPU seen from elsewhere
        is a TPU Node, whose health is checked first.
    """
    if tpu != "local" and not on_tpu_vm:
        check_tpu_node(tpu)
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
