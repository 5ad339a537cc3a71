"""A real two-process MultiWorkerMirroredStrategy cluster on localhost, started by `launch local`:
each worker reads its own half of the input, only the chief writes, and the test split decoded
across the two workers translates exactly as one process on one device does."""

import glob
import os
import shutil
import subprocess
import sys

import pytest
import tensorflow as tf

from tests import dataset_fixture

pytestmark = pytest.mark.slow

# Test batches of 8: the 39 test sentences make 5 batches, so decoding takes rounds over both
# workers and a last round where one worker's batch is a stand-in.
OVERRIDES = (
    "train.train_steps=8,train.steps_per_loop=1,train.eval_every=1000,data.batch_size=16,"
    "data.eval_batch_size=8"
)


def _run(argv):
    result = subprocess.run(
        argv, capture_output=True, text=True, cwd=dataset_fixture.REPO, timeout=600
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    return result.stdout + result.stderr


def _translations(model_dir):
    with open(os.path.join(model_dir, "test_translations.txt"), encoding="utf-8") as f:
        return f.read().splitlines()


def test_two_workers_shard_the_input_decode_like_one_process_and_only_the_chief_writes(
    small_dataset, tmp_path
):
    common = [
        "--experiment=attention_seq2seq/tiny",
        f"--data_dir={small_dataset.root}",
        f"--params_override={OVERRIDES}",
        "--deterministic",
    ]
    cluster_dir, single_dir = str(tmp_path / "cluster"), str(tmp_path / "single")
    log = _run(
        [
            sys.executable,
            "-m",
            "launch.main",
            "local",
            "--num_workers=2",
            *common,
            f"--model_dir={cluster_dir}",
        ]
    )
    assert "[worker 0]" in log and "[worker 1]" in log
    assert "Strategy multi_worker_mirrored with 2 replicas" in log
    assert "Input pipeline 2 of 2 at step 0" in log
    assert len(dataset_fixture.read_history(cluster_dir)) == 8
    assert sorted(os.listdir(os.path.join(cluster_dir, "summaries"))) == ["dev", "test", "train"]
    checkpoints = glob.glob(os.path.join(cluster_dir, "**", "checkpoint"), recursive=True)
    assert checkpoints == [os.path.join(cluster_dir, "checkpoints", "checkpoint")]
    assert os.path.exists(os.path.join(cluster_dir, "export", "saved_model.pb"))
    reader = tf.train.load_checkpoint(os.path.join(cluster_dir, "checkpoints"))
    positions = reader.get_tensor("input_positions/.ATTRIBUTES/VARIABLE_VALUE")
    assert sorted(positions[:, 0].tolist()) == [0, 1], "one position per worker's pipeline"

    # The same weights decoded by one process on one device (training is already done).
    shutil.copytree(cluster_dir, single_dir)
    _run(
        [
            sys.executable,
            "-m",
            "trainer.main",
            *common,
            f"--model_dir={single_dir}",
            "--strategy=one_device",
            "--noexport",
        ]
    )
    cluster, single = _translations(cluster_dir), _translations(single_dir)
    assert len(single) > 30 and len(set(single)) >= 10, "too alike to show a misplaced one"
    assert cluster == single
