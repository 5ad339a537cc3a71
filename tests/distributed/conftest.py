"""One uninterrupted two-worker run on localhost, shared read-only by the distributed tests.

A cluster run costs two TensorFlow start-ups, a trace per worker, an export and a decode of the
test split; the multi-worker test inspects this run and the fault tests compare their resumed
runs with it, so it is made once per session instead of once per module.
"""

import pytest

from tests.distributed import cluster


@pytest.fixture(scope="session")
def cluster_run(small_dataset, tmp_path_factory):
    """(model_dir, log) of the uninterrupted run. Tests must not write into model_dir."""
    model_dir = str(tmp_path_factory.mktemp("cluster_run"))
    log = cluster.run(cluster.launch_argv(small_dataset.root, model_dir))
    return model_dir, log
