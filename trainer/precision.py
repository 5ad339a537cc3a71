"""The training precision: what `train.mixed_precision='auto'` picks on this host, and why.

bfloat16 pays only where the hardware multiplies in it: a TPU (its matrix units are bfloat16),
an NVIDIA GPU of compute capability 8.0 or later (Ampere), or a CPU with AVX-512 BF16 or AMX
instructions (oneDNN runs the products there: about 1.3x the float32 tokens/s on the reference
model, with test BLEU equal to float32's at equal steps; README). Elsewhere bfloat16 is
emulated and gains nothing, so 'auto' trains in float32. float16 is never picked: it needs loss
scaling, and the GPUs that would gain from it (Volta, Turing) are the ones this choice leaves
in float32, for the user to opt into with 'mixed_float16'.
"""

from typing import NamedTuple

CPU_BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16")
AUTO = "auto"
FLOAT32 = "float32"
BFLOAT16 = "mixed_bfloat16"
FLOAT16 = "mixed_float16"


class Choice(NamedTuple):
    policy: str  # a Keras mixed-precision policy name
    reason: str  # one line, for the log

    @property
    def is_mixed(self) -> bool:
        return self.policy != FLOAT32


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset:
    """The CPU feature flags the kernel reports (empty where /proc/cpuinfo does not exist)."""
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def choose(requested: str, accelerator: str, flags=frozenset(), gpu_capability=None) -> Choice:
    """The policy for `train.mixed_precision=requested` on a host (pure: tested directly).

    Args:
      requested: the config value ('auto', 'float32', '', 'mixed_bfloat16', 'mixed_float16').
      accelerator: 'tpu', 'gpu' or 'cpu': what the replicas run on.
      flags: the host CPU's feature flags (for 'cpu').
      gpu_capability: (major, minor) compute capability of the first GPU (for 'gpu').

    Returns:
      A `Choice`.
    """
    if requested != AUTO:
        policy = requested or FLOAT32
        return Choice(policy, f"{policy}: set by train.mixed_precision")
    if accelerator == "tpu":
        return Choice(BFLOAT16, f"{BFLOAT16}: TPU matrix units compute in bfloat16")
    if accelerator == "gpu":
        if gpu_capability and tuple(gpu_capability) >= (8, 0):
            return Choice(BFLOAT16, f"{BFLOAT16}: GPU compute capability {gpu_capability} >= 8.0")
        return Choice(
            FLOAT32,
            f"{FLOAT32}: GPU compute capability {gpu_capability} has no bfloat16 "
            "(train.mixed_precision=mixed_float16 opts into float16)",
        )
    native = [flag for flag in CPU_BFLOAT16_FLAGS if flag in flags]
    if native:
        return Choice(BFLOAT16, f"{BFLOAT16}: the CPU computes bfloat16 natively ({native[0]})")
    return Choice(
        FLOAT32,
        f"{FLOAT32}: the CPU has no native bfloat16 ({' or '.join(CPU_BFLOAT16_FLAGS)} absent "
        "from /proc/cpuinfo), where it would be emulated",
    )
