"""A real two-process MultiWorkerMirroredStrategy cluster on localhost, started by `launch local`,
trains like one process with the same global batch and seed; only the chief writes."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests import dataset_fixture

pytestmark = pytest.mark.slow

OVERRIDES = "train.train_steps=8,train.steps_per_loop=1,train.eval_every=1000,data.batch_size=16"
# Two replicas sum their gradients in another order than one replica does; Adam turns those
# last-bit differences into relative loss differences far below this bound over a few steps.
LOSS_RTOL = 1e-3


def _losses(model_dir):
    with open(os.path.join(model_dir, "train_history.jsonl")) as f:
        return [json.loads(line)["loss"] for line in f]


def _run(argv, tmp_path):
    result = subprocess.run(
        argv, capture_output=True, text=True, cwd=dataset_fixture.REPO, timeout=600
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    return result.stdout + result.stderr


def test_two_workers_match_one_process_and_only_the_chief_writes(small_dataset, tmp_path):
    common = [
        "--experiment=attention_seq2seq/tiny",
        f"--data_dir={small_dataset.root}",
        f"--params_override={OVERRIDES}",
        "--deterministic",
    ]
    single_dir, cluster_dir = str(tmp_path / "single"), str(tmp_path / "cluster")
    _run(
        [sys.executable, "-m", "trainer.main", *common, f"--model_dir={single_dir}", "--noexport"],
        tmp_path,
    )
    log = _run(
        [
            sys.executable,
            "-m",
            "launch.main",
            "local",
            "--num_workers=2",
            *common,
            f"--model_dir={cluster_dir}",
        ],
        tmp_path,
    )
    assert "[worker 0]" in log and "[worker 1]" in log
    assert "Strategy multi_worker_mirrored with 2 replicas" in log
    single, cluster = _losses(single_dir), _losses(cluster_dir)
    assert len(single) == len(cluster) == 8
    np.testing.assert_allclose(cluster, single, rtol=LOSS_RTOL)
    assert sorted(os.listdir(os.path.join(cluster_dir, "summaries"))) == ["dev", "test", "train"]
    checkpoints = glob.glob(os.path.join(cluster_dir, "**", "checkpoint"), recursive=True)
    assert checkpoints == [os.path.join(cluster_dir, "checkpoints", "checkpoint")]
    assert os.path.exists(os.path.join(cluster_dir, "export", "saved_model.pb"))
