"""Where the job writes: a staging directory renamed into place, or the COMPLETED contract.

On a local filesystem the job writes into a sibling `<output_dir>.incomplete-<id>` and renames it
to `<output_dir>` only after COMPLETED is written, so a reader finds either no dataset or a whole
one. Object stores (gs://, s3://) have no directory rename: there the job writes in place and
readers rely on the COMPLETED marker, which `pipeline.metadata.read_metadata` checks; an
overwrite removes the old marker before anything else.
"""

import logging
import os
import shutil
import uuid

import tensorflow as tf

from pipeline import paths


class OutputExistsError(RuntimeError):
    """The output directory already holds files and --overwrite was not given."""


def is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _local(path: str) -> str:
    return path.removeprefix("file://")


def _has_files(path: str) -> bool:
    return tf.io.gfile.isdir(path) and bool(tf.io.gfile.listdir(path))


def check_writable(output_dir: str, overwrite: bool) -> None:
    """Refuses to replace existing output unless asked to.

    Raises:
      OutputExistsError: with what is there and what to do.
    """
    if overwrite or not _has_files(output_dir):
        return
    layout = paths.DatasetLayout(output_dir)
    if tf.io.gfile.exists(layout.completed):
        what = f"already holds a complete dataset ({paths.COMPLETED} is present)"
    else:
        what = f"is not empty but has no {paths.COMPLETED} marker (an interrupted run?)"
    raise OutputExistsError(
        f"{output_dir} {what}. Pass --overwrite to replace it, or choose another --output_dir."
    )


def prepare(output_dir: str, overwrite: bool) -> str:
    """Checks the output directory and returns the directory the job should write into.

    Raises:
      OutputExistsError: see `check_writable`.
    """
    output_dir = output_dir.rstrip("/")
    check_writable(output_dir, overwrite)
    if is_local(output_dir):
        staging = f"{_local(output_dir)}.incomplete-{uuid.uuid4().hex[:8]}"
        os.makedirs(staging)
        return staging
    if _has_files(output_dir):
        completed = paths.DatasetLayout(output_dir).completed
        if tf.io.gfile.exists(completed):
            tf.io.gfile.remove(completed)
        tf.io.gfile.rmtree(output_dir)
    return output_dir


def commit(staging: str, output_dir: str) -> None:
    """Moves a finished staging directory into place, replacing any previous output."""
    output_dir = output_dir.rstrip("/")
    if staging == output_dir:
        return
    final = _local(output_dir)
    if os.path.isdir(final) and os.listdir(final):
        replaced = f"{final}.replaced-{uuid.uuid4().hex[:8]}"
        os.rename(final, replaced)
        os.rename(staging, final)
        shutil.rmtree(replaced)
    else:
        os.rename(staging, final)  # Replaces an empty directory atomically, too.
    logging.info("Moved %s to %s.", staging, final)


def abandon(staging: str, output_dir: str) -> None:
    """Removes the staging directory of a failed run (never the previous output)."""
    if staging != output_dir.rstrip("/") and os.path.isdir(staging):
        shutil.rmtree(staging)
        logging.info("Removed the unfinished %s.", staging)
