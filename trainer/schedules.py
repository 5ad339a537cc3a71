"""Learning-rate schedule: linear warmup, then constant or inverse-square-root decay.

A pure function of the optimizer's step, so it resumes exactly from a checkpoint.
"""

import tensorflow as tf

from pipeline import config as config_lib


class WarmupDecay(tf.keras.optimizers.schedules.LearningRateSchedule):
    def __init__(self, peak: float, warmup_steps: int, decay: str):
        self.peak = peak
        self.warmup_steps = max(warmup_steps, 1)
        self.decay = decay

    def __call__(self, step):
        step = tf.cast(step, tf.float32) + 1.0
        warmup = tf.cast(self.warmup_steps, tf.float32)
        ramp = tf.minimum(1.0, step / warmup)
        if self.decay == "rsqrt":
            ramp *= tf.math.rsqrt(tf.maximum(step, warmup) / warmup)
        return self.peak * ramp

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps, "decay": self.decay}


def build_optimizer(cfg: config_lib.TrainConfig) -> tf.keras.mixed_precision.LossScaleOptimizer:
    """Adam on the warmup/decay schedule, inside a dynamic LossScaleOptimizer.

    The wrapper is the NaN/Inf guard for every precision: it skips an update whose gradients are
    not finite, across replicas, and still advances the step. float16 needs real loss scaling
    (from 2**15, growing); elsewhere the scale starts at 1 and never grows, so scaling is exact
    (only a skipped step halves it: a power of two, still exact).
    """
    adam = tf.keras.optimizers.Adam(
        WarmupDecay(cfg.learning_rate, cfg.warmup_steps, cfg.decay), epsilon=1e-8
    )
    if cfg.mixed_precision == "mixed_float16":
        return tf.keras.mixed_precision.LossScaleOptimizer(adam, initial_scale=2.0**15)
    return tf.keras.mixed_precision.LossScaleOptimizer(
        adam, initial_scale=1.0, dynamic_growth_steps=2**31 - 1
    )
