"""`train.mixed_precision=auto`: bfloat16 where the hardware computes it natively, else float32.

No GPU or TPU exists here: those cases call the pure `precision.choose` with the facts a GPU or
TPU host would report; the CPU case reads this machine's real /proc/cpuinfo.
"""

import logging

import pytest
import tensorflow as tf

from pipeline import config as config_lib
from trainer import precision

BF16, F32 = "mixed_bfloat16", "float32"


@pytest.mark.parametrize(
    "accelerator, flags, capability, expected",
    [
        ("cpu", {"avx2", "avx512f", "avx512_bf16"}, None, BF16),
        ("cpu", {"avx2", "amx_tile", "amx_bf16"}, None, BF16),
        ("cpu", {"avx2", "avx512f"}, None, F32),  # AVX-512 without BF16: emulated
        ("cpu", set(), None, F32),
        ("tpu", set(), None, BF16),
        ("gpu", set(), (8, 0), BF16),
        ("gpu", set(), (9, 0), BF16),
        ("gpu", set(), (7, 5), F32),
        ("gpu", set(), None, F32),
    ],
)
def test_auto_picks_bfloat16_only_on_native_hardware(accelerator, flags, capability, expected):
    choice = precision.choose("auto", accelerator, frozenset(flags), capability)
    assert choice.policy == expected
    assert choice.reason.startswith(expected) and len(choice.reason) > len(expected) + 10
    assert choice.is_mixed == (expected != F32)


@pytest.mark.parametrize(
    "requested, expected", [("", F32), (F32, F32), (BF16, BF16), ("mixed_float16", "mixed_float16")]
)
def test_an_explicit_precision_is_kept_on_any_host(requested, expected):
    for accelerator in ("cpu", "gpu", "tpu"):
        choice = precision.choose(requested, accelerator, frozenset({"avx512_bf16"}), (8, 0))
        assert choice.policy == expected
        assert "set by train.mixed_precision" in choice.reason


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\nbugs\t\t: none\n")
    assert precision.cpu_flags(str(cpuinfo)) == {"fpu", "avx2", "avx512_bf16"}
    assert precision.cpu_flags(str(tmp_path / "missing")) == frozenset()


def test_base_experiment_is_auto_and_the_test_experiment_is_pinned():
    assert config_lib.get_experiment("attention_seq2seq/base").train.mixed_precision == "auto"
    # Tests run the same maths on every machine; bfloat16 paths are tested explicitly.
    assert config_lib.get_experiment("attention_seq2seq/tiny").train.mixed_precision == F32


def test_trainer_applies_and_logs_the_choice_for_this_host(small_dataset, tmp_path, caplog):
    from trainer import train_loop

    cfg = config_lib.build_config(
        "attention_seq2seq/tiny",
        params_override=f"data.data_dir={small_dataset.root},train.mixed_precision=auto",
    )
    expected = precision.choose("auto", "cpu", precision.cpu_flags())
    with caplog.at_level(logging.INFO, logger="absl"):  # whatever verbosity ran before
        try:
            trainer = train_loop.Trainer(cfg, str(tmp_path), tf.distribute.get_strategy())
            policy = tf.keras.mixed_precision.global_policy().name
        finally:
            tf.keras.mixed_precision.set_global_policy("float32")
    assert trainer.cfg.train.mixed_precision == expected.policy == policy
    assert f"Precision {expected.reason}." in caplog.text
    assert (trainer.decoding_model() is trainer.model) == (not expected.is_mixed)
