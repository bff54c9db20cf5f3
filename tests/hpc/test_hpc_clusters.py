"""Cluster configs: the shipped ones load, and bad keys / values stop with a message listing what is valid."""
import pytest

from hpc import clusters
from hpc.clusters import ClusterConfigError, from_dict, load, time_minutes


def test_shipped_configs_load():
    names = clusters.available_clusters()
    assert {"local", "slurm-local", "a100-template", "h100-template"} <= set(names)
    assert load("local").executor == "local"
    slurm_local = load("slurm-local")
    assert slurm_local.executor == "slurm" and slurm_local.base.partition == "debug"
    h100 = load("h100-template")
    assert h100.base.account and h100.base.qos
    train = h100.resources("train")
    assert train.gpus_per_node == 8 and train.qos == "long" and train.account == h100.base.account
    assert h100.resources("score", "imagereward").python.endswith("imagereward/bin/python")
    assert h100.resources("score", "clipscore").python is None


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ClusterConfigError) as info:
        from_dict({"executor": "slurm", "partiton": "gpu"})
    message = str(info.value)
    assert "partiton" in message and "did you mean 'partition'" in message
    assert "valid keys:" in message and "gpus_per_node" in message and "\n" not in message


@pytest.mark.parametrize("raw, needle", [
    ({"time": "2 hours"}, "time must be a Slurm time"),
    ({"mem": "lots"}, "mem must be a Slurm memory size"),
    ({"gpus_per_node": -1}, "gpus_per_node must be an integer >= 0"),
    ({"cpus_per_task": 0}, "cpus_per_task must be an integer >= 1"),
    ({"nodes": True}, "nodes must be an integer"),
    ({"executor": "pbs"}, "executor must be one of local, slurm"),
    ({"max_array_size": 0}, "max_array_size must be an integer >= 1"),
    ({"setup": [1]}, "setup must be a list of shell lines"),
    ({"stages": {"smaple": {}}}, "stages.smaple is not a stage; valid stages: prepare, sample"),
    ({"stages": {"train": {"gpu": 1}}}, "stages.train: unknown key 'gpu'"),
    ({"rewards": {"hpsv2": {"python": ""}}}, "python must be an interpreter"),
    ({"sbatch": {"Bad Key": 1}}, "sbatch option key must be a long option name such as 'mail-type', got 'Bad Key'"),
])
def test_bad_values_are_named(raw, needle):
    with pytest.raises(ClusterConfigError, match=needle.replace("(", r"\(")):
        from_dict(raw)


def test_overrides_inherit_base_and_reward_inherits_score():
    cfg = from_dict({"partition": "gpu", "time": "1:00:00", "stages": {"score": {"time": "30"}},
                     "rewards": {"hpsv2": {"python": "/envs/h/bin/python"}}})
    assert cfg.resources("sample").partition == "gpu"
    assert cfg.resources("score", "clipscore").time == "30"
    hps = cfg.resources("score", "hpsv2")
    assert hps.time == "30" and hps.python == "/envs/h/bin/python" and hps.partition == "gpu"


def test_unknown_cluster_lists_valid():
    with pytest.raises(ClusterConfigError, match="valid clusters: .*slurm-local"):
        load("nope")


@pytest.mark.parametrize("text, minutes", [("30", 30), ("10:30", 10.5), ("02:00:00", 120), ("1-12", 2160),
                                           ("1-00:30", 1470), ("0-00:00:30", 0.5)])
def test_time_minutes(text, minutes):
    assert time_minutes(text) == pytest.approx(minutes)


@pytest.mark.parametrize("name", ["a100-template", "h100-template", "slurm-local"])
def test_templates_fit_their_nodes_and_finalize_small(name):
    """Every stage's processes x cpus_per_task fit the nodes' cpus_per_node (the templates asked for 128 and
    512 CPUs a node: one task per GPU, each with the node's CPUs); finalisation is 1 CPU, no GPU."""
    from hpc import clusters, render
    from fyp.stages import PIPELINE

    cluster = clusters.load(name)
    for stage in PIPELINE:
        res = cluster.resources(stage)
        assert res.cpus_per_node, (name, stage)
        clusters.check_shape(cluster, stage, res, render.tasks_per_node(stage, res))
        fin = cluster.finalize_resources(stage)
        assert (fin.gpus_per_node, fin.cpus_per_task, fin.nodes, fin.mem) == (0, 1, 1, "4G")
        assert fin.partition == cluster.base.partition


def test_a_shape_that_cannot_fit_is_refused_with_what_to_set():
    from hpc import clusters

    cluster = clusters.from_dict({"executor": "slurm", "cpus_per_node": 32,
                                  "stages": {"train": {"gpus_per_node": 4, "cpus_per_task": 32}}}, "mine")
    with pytest.raises(clusters.ClusterConfigError, match=r"4 task\(s\) per node x cpus_per_task 32 = 128 CPUs.*at most 8"):
        clusters.check_shape(cluster, "train", cluster.resources("train"), 4)
    over = clusters.from_dict({"executor": "slurm", "finalize": {"mem": "16G"}}, "big-finalize")
    assert over.finalize_resources("score").mem == "16G"
