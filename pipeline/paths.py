"""Directory layouts: the preprocessed dataset and a training run.

Every stage finds files through these functions, so a layout change is one edit here. Paths are
plain strings joined with `os.path.join`, which `tf.io.gfile` and Beam accept for `gs://` too.
"""

import os

SPLITS = ("train", "dev", "test")
COMPLETED = "COMPLETED"


class DatasetLayout:
    """Files written by the Beam job under one output directory."""

    def __init__(self, root: str):
        self.root = root

    @property
    def metadata(self) -> str:
        return os.path.join(self.root, "metadata.json")

    @property
    def completed(self) -> str:
        return os.path.join(self.root, COMPLETED)

    def vocabulary(self, side: str) -> str:
        """`side` is 'source' or 'target'; with a shared vocabulary both files are equal."""
        return os.path.join(self.root, "vocab", f"{side}.model")

    def shard_prefix(self, split: str) -> str:
        return os.path.join(self.root, split, split)

    def shard_pattern(self, split: str) -> str:
        return self.shard_prefix(split) + "-*-of-*.tfrecord"

    @property
    def rejects_prefix(self) -> str:
        return os.path.join(self.root, "rejects", "rejects")

    @property
    def rejects_pattern(self) -> str:
        return self.rejects_prefix + "-*-of-*.tsv"


class RunLayout:
    """Files a training run writes under its model directory (chief only)."""

    def __init__(self, root: str):
        self.root = root

    @property
    def config(self) -> str:
        return os.path.join(self.root, "config.yaml")

    @property
    def checkpoints(self) -> str:
        return os.path.join(self.root, "checkpoints")

    def summaries(self, name: str) -> str:
        return os.path.join(self.root, "summaries", name)

    @property
    def eval_history(self) -> str:
        """JSON lines, one per evaluation: step, dev loss, BLEU, chrF."""
        return os.path.join(self.root, "eval_history.jsonl")

    @property
    def train_history(self) -> str:
        """JSON lines, one per logged loop: step, loss, learning rate, sampling probability."""
        return os.path.join(self.root, "train_history.jsonl")

    @property
    def best_checkpoint(self) -> str:
        return os.path.join(self.root, "best")

    @property
    def export(self) -> str:
        return os.path.join(self.root, "export")

    @property
    def plots(self) -> str:
        return os.path.join(self.root, "plots")
