"""A real two-process MultiWorkerMirroredStrategy cluster on localhost, started by `launch local`:
each worker reads its own half of the input, only the chief writes, and the test split decoded
across the two workers translates exactly as one process on one device does."""

import glob
import os
import shutil
import sys

import pytest
import tensorflow as tf

from tests import dataset_fixture
from tests.distributed import cluster

pytestmark = pytest.mark.slow


def _translations(model_dir):
    with open(os.path.join(model_dir, "test_translations.txt"), encoding="utf-8") as f:
        return f.read().splitlines()


def test_two_workers_shard_the_input_decode_like_one_process_and_only_the_chief_writes(
    small_dataset, cluster_run, tmp_path
):
    cluster_dir, log = cluster_run
    assert "[worker 0]" in log and "[worker 1]" in log
    assert "Strategy multi_worker_mirrored with 2 replicas" in log
    assert "Input pipeline 2 of 2 at step 0" in log
    assert len(dataset_fixture.read_history(cluster_dir)) == cluster.TRAIN_STEPS
    assert sorted(os.listdir(os.path.join(cluster_dir, "summaries"))) == ["dev", "test", "train"]
    checkpoints = glob.glob(os.path.join(cluster_dir, "**", "checkpoint"), recursive=True)
    assert checkpoints == [os.path.join(cluster_dir, "checkpoints", "checkpoint")]
    assert os.path.exists(os.path.join(cluster_dir, "export", "saved_model.pb"))
    reader = tf.train.load_checkpoint(os.path.join(cluster_dir, "checkpoints"))
    positions = reader.get_tensor("input_positions/.ATTRIBUTES/VARIABLE_VALUE")
    assert sorted(positions[:, 0].tolist()) == [0, 1], "one position per worker's pipeline"

    # The same weights decoded by one process on one device (training is already done), in a
    # copy: the cluster run is shared with the fault tests.
    single_dir = str(tmp_path / "single")
    shutil.copytree(cluster_dir, single_dir)
    cluster.run(
        [
            sys.executable,
            "-m",
            "trainer.main",
            "--experiment=attention_seq2seq/tiny",
            f"--data_dir={small_dataset.root}",
            f"--params_override={cluster.OVERRIDES}",
            "--deterministic",
            f"--model_dir={single_dir}",
            "--strategy=one_device",
            "--noexport",
        ]
    )
    two_workers, single = _translations(cluster_dir), _translations(single_dir)
    assert len(single) > 30 and len(set(single)) >= 10, "too alike to show a misplaced one"
    assert two_workers == single
