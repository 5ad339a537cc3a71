"""Shared fixtures: a small real dataset in the Beam output layout, built once per session."""

import pytest

from tests import dataset_fixture


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """400 real corpus pairs, 80/10/10 split, written like the Beam job writes them."""
    root = tmp_path_factory.mktemp("small_dataset")
    return dataset_fixture.write_dataset(str(root), dataset_fixture.read_corpus(400))
