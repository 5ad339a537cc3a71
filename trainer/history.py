"""The run's JSON-lines histories (`train_history.jsonl`, `eval_history.jsonl`) and summaries.

Only the chief writes; other workers get no-op writers. A resumed run first drops the records
past its checkpoint, which it is about to write again.
"""

import json

import tensorflow as tf


def append(path: str, record: dict):
    with tf.io.gfile.GFile(path, "a") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")


def truncate(paths: list[str], step: int):
    """Drops the records past `step` from each history file that exists."""
    for path in paths:
        if not tf.io.gfile.exists(path):
            continue
        with tf.io.gfile.GFile(path) as f:
            records = [line for line in f if json.loads(line)["step"] <= step]
        with tf.io.gfile.GFile(path, "w") as f:
            f.write("".join(records))


def summary_writer(layout, name: str, is_chief: bool):
    """TensorBoard writer for `name` (train, dev, test) on the chief; a no-op elsewhere."""
    if is_chief:
        return tf.summary.create_file_writer(layout.summaries(name))
    return tf.summary.create_noop_writer()
