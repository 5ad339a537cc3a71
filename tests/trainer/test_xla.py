"""XLA: the jit-compiled train step (parallel scheduled sampling on) compiles once per bucket
shape, not once per step. The TPU input and loss: tests/trainer/test_tpu_path.py."""

import os
import subprocess
import sys

import pytest

from pipeline import config
from tests import dataset_fixture
from trainer import data

pytestmark = pytest.mark.slow

# Ten steps: the small dataset's batches come in all three tiny buckets within the first seven,
# so a step that recompiled per step (or per call) would show 10 compilations, not 3. Fewer
# steps than the tiny config's eval_every leave one dev evaluation (at the end), not two.
STEPS = 10


def _bucket_lengths_seen(cfg, steps):
    dataset = data.make_train_dataset(cfg.data, cfg.train.seed, pad_to_buckets=True).take(steps)
    return {int(batch[data.SOURCE_IDS].shape[1]) for batch in dataset}


def test_jit_step_compiles_once_per_bucket_shape(small_dataset, tmp_path):
    overrides = (
        f"train.train_steps={STEPS},train.jit_compile=true,train.sampling_probability=0.3,"
        "train.sampling_mode=parallel"
    )
    cfg = config.build_config(
        "attention_seq2seq/tiny", params_override=f"{overrides},data.data_dir={small_dataset.root}"
    )
    buckets = _bucket_lengths_seen(cfg, STEPS)
    assert len(buckets) >= 2, "the run must cross buckets for the count to mean anything"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0", "TF_CPP_VMODULE": "device_compiler=1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer.main",
            "--experiment=attention_seq2seq/tiny",
            f"--data_dir={small_dataset.root}",
            f"--model_dir={tmp_path}",
            f"--params_override={overrides}",
            "--noexport",
            "--noevaluate_test",
            "--verbosity=1",  # TF's C++ log on the console, where this test counts
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=dataset_fixture.REPO,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    compiles = result.stderr.count("Compilation of XLA executable")
    assert compiles == len(buckets), f"{compiles} XLA compilations for buckets {sorted(buckets)}"
