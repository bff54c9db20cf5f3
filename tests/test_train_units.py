"""Unit tests of the trainer's pieces: draws, shift, data order, LR schedule, Slurm rendezvous, brightness."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fyp.config import ConfigError, TrainConfig
from fyp.dpo import flow, launch
from fyp.dpo.data import hole_at_latent
from fyp.dpo.train import check_train_config, epochs_needed, global_indices, lr_lambda
from fyp.rewards import build as build_reward
from fyp.rewards.brightness import hole_luminance

FLUX_SCHEDULER = dict(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                      max_image_seq_len=4096, shift=3.0)


def test_shift_matches_the_diffusers_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER)
    sigmas = torch.tensor([0.001, 0.25, 0.5, 0.9, 1.0])
    for seq_len in (16, 1024, 4096):
        mu = flow.calculate_shift(seq_len)
        assert torch.allclose(flow.shift_sigmas(sigmas, FLUX_SCHEDULER, seq_len), sched.time_shift(mu, 1.0, sigmas),
                              atol=1e-6)
    static = dict(use_dynamic_shifting=False, shift=3.0)
    assert torch.allclose(flow.shift_sigmas(torch.tensor([0.5]), static, 16), torch.tensor([0.75]))


def test_draws_depend_on_the_pair_only_and_noise_sharing():
    kw = dict(seed=3, scheduler_config=FLUX_SCHEDULER, sampling="uniform")
    alone = flow.draw_pairs([5], [1], (16, 8), shared_noise=True, **kw)
    batch = flow.draw_pairs([2, 5, 7], [0, 1, 1], (16, 8), shared_noise=True, **kw)
    assert torch.equal(alone.noise_w[0], batch.noise_w[1]) and torch.equal(alone.sigma[0], batch.sigma[1])
    assert torch.equal(batch.noise_w, batch.noise_l)  # DPO: one eps for winner and loser
    other_epoch = flow.draw_pairs([5], [2], (16, 8), shared_noise=True, **kw)
    assert not torch.equal(alone.noise_w, other_epoch.noise_w)
    capo = flow.draw_pairs([5], [1], (16, 8), shared_noise=False, **kw)
    assert torch.equal(capo.noise_w, alone.noise_w) and not torch.equal(capo.noise_l, capo.noise_w)
    many = flow.draw_pairs(list(range(400)), [0] * 400, (1, 1), shared_noise=True, **kw)
    assert 0 < many.sigma.min() and many.sigma.max() <= 1 and many.sigma.std() > 0.15
    logit = flow.draw_pairs(list(range(400)), [0] * 400, (1, 1), shared_noise=True,
                            **{**kw, "sampling": "logit-normal"})
    assert logit.sigma.std() < many.sigma.std()  # mass pulled towards the middle
    with pytest.raises(ValueError, match="timestep_sampling"):
        flow.draw_pairs([0], [0], (1, 1), **{**kw, "sampling": "cosine"})


def test_noisy_and_target():
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 3, generator=gen), torch.randn(2, 4, 3, generator=gen)
    x_t, target = flow.noisy_and_target(x0, eps, torch.tensor([0.0, 1.0]))
    assert torch.equal(x_t[0], x0[0]) and torch.equal(x_t[1], eps[1]) and torch.equal(target, eps - x0)


def test_global_order_is_the_same_for_one_or_two_processes_and_covers_each_epoch():
    kw = dict(batch=1, grad_accum=1, num_pairs=5, seed=0)
    one = [global_indices(s, 0, 0, world=1, **{**kw, "batch": 2}) for s in range(5)]
    two = [[global_indices(s, 0, r, world=2, **kw) for r in range(2)] for s in range(5)]
    for step in range(5):
        assert one[step][0] == two[step][0][0] + two[step][1][0]
    flat = [p for pairs, _ in one for p in pairs]
    assert sorted(flat[:5]) == list(range(5)) and sorted(flat[5:10]) == list(range(5))
    accum = [global_indices(0, m, 0, world=1, batch=1, grad_accum=2, num_pairs=5, seed=0)[0][0] for m in range(2)]
    assert accum == one[0][0]  # grad_accum 2 x batch 1 == batch 2
    assert epochs_needed(TrainConfig(steps=5, batch_size=2), 1, 5) == 2


def test_lr_schedule():
    assert [lr_lambda(s, 4, 10, "constant") for s in (0, 3, 4, 9)] == [0.25, 1.0, 1.0, 1.0]
    assert lr_lambda(10, 0, 10, "linear") == 0.0 and lr_lambda(5, 0, 10, "cosine") == pytest.approx(0.5)


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="train.loss"):
        check_train_config(TrainConfig(loss="kto"))
    with pytest.raises(ConfigError, match="train.trainable"):
        check_train_config(TrainConfig(trainable="mlp"))


def test_hole_at_latent_is_any_hole_pixel_in_the_block():
    mask = np.zeros((1, 8, 8), np.uint8)
    mask[0, 5, 2] = 1
    lat = hole_at_latent(mask, 4)
    assert lat.shape == (1, 1, 2, 2) and lat[0, 0].tolist() == [[0, 0], [1, 0]]


def test_slurm_rendezvous(monkeypatch):
    monkeypatch.setattr(launch.shutil, "which", lambda name: None)  # parse the list ourselves
    env = dict(SLURM_PROCID="3", SLURM_NTASKS="8", SLURM_LOCALID="3", SLURM_JOB_NODELIST="gpu[007-008,010]",
               SLURM_JOB_ID="12345")
    out = launch.distributed_env(env)
    port = launch.rendezvous_port(12345)
    assert out == dict(RANK="3", WORLD_SIZE="8", LOCAL_RANK="3", MASTER_ADDR="gpu007", MASTER_PORT=str(port))
    assert launch.first_host("node1,node2") == "node1"
    # a stale rendezvous left in the submitting shell (sbatch exports it) does not override the job's
    stale = launch.distributed_env(dict(env, MASTER_ADDR="login7", MASTER_PORT="29500", RANK="0", WORLD_SIZE="1"))
    assert stale == out
    torchrun = launch.distributed_env(dict(RANK="1", WORLD_SIZE="2", LOCAL_RANK="1", MASTER_ADDR="h", MASTER_PORT="9",
                                           SLURM_PROCID="0", SLURM_NTASKS="1", TORCHELASTIC_RUN_ID="x"))
    assert torchrun["RANK"] == "1" and torchrun["WORLD_SIZE"] == "2"  # torchrun in a one-task job wins over Slurm
    alone = launch.distributed_env({})
    assert alone["WORLD_SIZE"] == "1" and int(alone["MASTER_PORT"]) > 0


def test_rendezvous_port_is_below_the_ephemeral_range():
    ports = {launch.rendezvous_port(job, ephemeral_low=32768) for job in range(0, 200000, 7)}
    assert min(ports) >= launch.PORT_BASE and max(ports) < 32768 and len(ports) > 1000
    narrow = {launch.rendezvous_port(job, ephemeral_low=16000) for job in range(5000)}
    assert max(narrow) < 16000 and len(narrow) == 1000


@pytest.mark.parametrize("nodelist, hosts", [
    ("node[1-2]-ib", ["node1-ib", "node2-ib"]),
    ("gpu[007-008,010],cpu1", ["gpu007", "gpu008", "gpu010", "cpu1"]),
    ("r[1-2]n[09-10]", ["r1n09", "r1n10", "r2n09", "r2n10"]),
    ("a-[3,1]-x,b", ["a-3-x", "a-1-x", "b"]),
    ("single", ["single"]),
])
def test_nodelist_fallback_parser(nodelist, hosts):
    assert launch.expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize("bad", ["node[1-", "node[a-b]", "", "x]"])
def test_nodelist_parser_refuses_garbage(bad):
    with pytest.raises(ValueError, match="node list"):
        launch.expand_nodelist(bad)


def test_brightness_reward_scores_the_hole():
    images = torch.zeros(2, 4, 4, 3, dtype=torch.uint8)
    images[:, :2] = 255  # top half white
    masks = torch.zeros(2, 4, 4, dtype=torch.uint8)
    masks[0, :2] = 1  # hole on the white half
    masks[1, 2:] = 1  # hole on the black half
    reward = build_reward("brightness", tiny=True)
    scores = reward.score(images, ["a", "b"], masks=masks)
    assert scores.dtype == torch.float32 and scores.tolist() == pytest.approx([1.0, 0.0], abs=1e-6)
    assert reward.score(images, ["a", "b"]).tolist() == pytest.approx([0.5, 0.5], abs=1e-6)
    assert hole_luminance(images, torch.zeros_like(masks)).tolist() == pytest.approx([0.5, 0.5], abs=1e-6)
    with pytest.raises(ValueError, match="masks"):
        reward.score(images, ["a", "b"], masks=masks[:, :2])
    with pytest.raises(ValueError, match="options"):
        build_reward("brightness", colour="red")


@pytest.mark.parametrize("mode", ["all", "attention", "lora"])
def test_trainable_parameter_sets(mode):
    from fyp.dpo.train import set_trainable
    from fyp.models import build_tiny_components

    transformer = build_tiny_components(0, 8)["transformer"]
    lora = set_trainable(transformer, TrainConfig(trainable=mode, lora_rank=2))
    names = [n for n, p in transformer.named_parameters() if p.requires_grad]
    total = sum(1 for _ in transformer.parameters())
    if mode == "all":
        assert len(names) == total and lora is None
    elif mode == "attention":
        assert names and all(".attn." in n for n in names) and len(names) < total
    else:
        assert names and all("lora_" in n for n in names) and lora["r"] == 2


def test_sigusr2_requests_a_stop():
    import os
    import signal

    from fyp.dpo import train as train_mod

    previous = signal.getsignal(signal.SIGUSR2)
    try:
        train_mod.install_signal_handler()
        os.kill(os.getpid(), signal.SIGUSR2)
        assert train_mod._STOP.is_set()
    finally:
        train_mod._STOP.clear()
        signal.signal(signal.SIGUSR2, previous)


def test_cli_bad_run_is_one_line(tmp_path, capsys):
    from fyp.dpo.train import main

    assert main(["--run", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fyp.dpo.train: ") and "not a prepared run" in err and "\n" not in err


def test_float16_training_is_refused():
    from fyp.dpo.train import check_training_dtype

    check_training_dtype("float32")
    check_training_dtype("bfloat16")
    with pytest.raises(ConfigError, match="model.dtype.*bfloat16.*'float16'"):
        check_training_dtype("float16")


def test_weight_source_reads_sharded_safetensors(tmp_path):
    """The plain-read safetensors source (used to load weights under zero.Init) equals safetensors' own load."""
    from safetensors.torch import load_file

    from fyp.dpo.zero3 import WeightSource
    from fyp.models import build_tiny_components

    transformer = build_tiny_components(0, 8)["transformer"].to(torch.bfloat16)
    transformer.save_pretrained(tmp_path / "sharded", max_shard_size="50KB")
    transformer.save_pretrained(tmp_path / "single")
    state = transformer.state_dict()
    for folder in ("sharded", "single"):
        source = WeightSource.from_folder(tmp_path / folder)
        assert source.keys() == set(state)
        for key, value in state.items():
            got = source.get(key)
            assert got.dtype == torch.bfloat16 and torch.equal(got, value), key
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    expected = load_file(tmp_path / "single" / "diffusion_pytorch_model.safetensors")
    assert set(expected) == set(state)
    with pytest.raises(FileNotFoundError, match="safetensors"):
        WeightSource.from_folder(tmp_path)


def test_deepspeed_config_takes_extra_settings():
    from fyp.dpo.train import deepspeed_config

    base = deepspeed_config(TrainConfig(zero_stage=3), 2, True)
    assert base["zero_optimization"]["stage"] == 3 and base["bf16"] == {"enabled": True}
    assert base["train_batch_size"] == 2 and base["optimizer"]["params"]["torch_adam"]
    extra = TrainConfig(zero_stage=3, options={"deepspeed": {"zero_optimization": {"reduce_bucket_size": 100}}})
    merged = deepspeed_config(extra, 2, True)
    assert merged["zero_optimization"] == {**base["zero_optimization"], "reduce_bucket_size": 100}
    with pytest.raises(ConfigError, match="train.options.deepspeed"):
        deepspeed_config(TrainConfig(options={"deepspeed": 3}), 1, False)
    from fyp.dpo.zero3 import copies_partitions

    assert copies_partitions(merged)  # the reference is copied partition to partition
    nvme = TrainConfig(zero_stage=3, options={"deepspeed": {"zero_optimization": {
        "offload_param": {"device": "nvme", "nvme_path": "/local"}}}})
    assert not copies_partitions(deepspeed_config(nvme, 2, True))  # no partition in memory: read again
