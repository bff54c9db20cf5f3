"""The Slurm tests' cluster: the local two-node cluster, started once (idempotent)."""
import pytest

from hpc import local_slurm


@pytest.fixture(scope="session")
def cluster():
    local_slurm.start(verbose=False, nodes=2)
    assert local_slurm.is_up() and local_slurm.configured_nodes() == ["node1", "node2"]
