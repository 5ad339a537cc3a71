"""Shared fixtures, each built once per session and only read by the tests that take them: a
small real dataset in the Beam output layout, an untrained tiny model's export and a short tiny
training run. Each costs a TensorFlow trace, an export or a child process; sharing them keeps
`make test` inside its time budget."""

import os

import pytest

from tests import dataset_fixture


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """400 real corpus pairs, 80/10/10 split, written like the Beam job writes them."""
    root = tmp_path_factory.mktemp("small_dataset")
    return dataset_fixture.write_dataset(str(root), dataset_fixture.read_corpus(400))


@pytest.fixture(scope="session")
def tiny_export(small_dataset, tmp_path_factory):
    """The export directory of the untrained tiny model: the serving tools need weights, not
    good ones. Tests copy it before changing anything in it."""
    from trainer import export

    model_dir = str(tmp_path_factory.mktemp("tiny_export"))
    trainer = dataset_fixture.tiny_trainer(small_dataset.root, model_dir)
    return export.export_saved_model(trainer, trainer.layout.export)


@pytest.fixture(scope="session")
def trained_tiny_run(small_dataset, tmp_path_factory):
    """(model_dir, console) of `nmt-train` on the tiny config run to the end in a child process,
    with its defaults: dev evaluations, the test split decoded and scored, the export.

    TF_CPP_MIN_LOG_LEVEL is unset, as for a user, so the console tests see what TensorFlow
    prints at start-up. Tests must not write into model_dir.
    """
    model_dir = str(tmp_path_factory.mktemp("trained_tiny_run"))
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    console = dataset_fixture.train_tiny(
        small_dataset.root, model_dir, dataset_fixture.TRAINED_RUN_OVERRIDES, env=env
    )
    return model_dir, console
