"""Unit tests of the trainer's pieces: draws, shift, data order, LR schedule, Slurm rendezvous, brightness."""
from __future__ import annotations

from pathlib import Path

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


# -- paper-reproduction switches (issue 14 item 5) -----------------------------------------------------
def test_sigma_grid_and_the_timestep_shift_against_hand_computed_values():
    """`none`: the official code's sigma = (floor(u * 1000) + 1) / 1000 in {1..1000}/1000, mean 0.5005 over the
    grid; `flux`: FLUX's dynamic shift at 512 px (1024 packed tokens): mu = 0.5 + (1024 - 256) * 0.65 / 3840
    = 0.63, s(0.5) = e^0.63 / (e^0.63 + 1) = 0.652489, mean 0.604 over the grid."""
    u = torch.tensor([0.0, 0.0004, 0.001, 0.4999, 0.5, 0.99999])
    assert flow.grid_sigma(u).tolist() == pytest.approx([0.001, 0.001, 0.002, 0.5, 0.501, 1.0])
    grid = torch.arange(1, 1001) / 1000
    assert float(grid.mean()) == pytest.approx(0.5005)
    assert flow.calculate_shift(1024) == pytest.approx(0.63)
    shifted = flow.shift_sigmas(grid, FLUX_SCHEDULER, 1024)
    assert float(shifted[499]) == pytest.approx(0.652489, abs=1e-6)  # sigma 0.5
    assert float(shifted.mean()) == pytest.approx(0.6041, abs=1e-4)

    kw = dict(seed=3, scheduler_config=FLUX_SCHEDULER, sampling="uniform", shared_noise=True)
    pairs = list(range(64))
    plain = flow.draw_pairs(pairs, [0] * 64, (1024, 1), shift="none", **kw)
    shifted_draw = flow.draw_pairs(pairs, [0] * 64, (1024, 1), shift="flux", **kw)
    steps = plain.sigma * 1000
    assert torch.equal(steps, steps.round()) and steps.min() >= 1 and steps.max() <= 1000  # on the grid
    # the same u per pair, shifted or not; the noise does not depend on the shift
    assert torch.allclose(shifted_draw.sigma, flow.shift_sigmas(plain.sigma, FLUX_SCHEDULER, 1024))
    assert torch.equal(plain.noise_w, shifted_draw.noise_w)
    gen = flow.pair_generator(3, 0, 5, 0)
    assert float(plain.sigma[5]) == pytest.approx(float(flow.grid_sigma(torch.rand((), generator=gen))))
    with pytest.raises(ValueError, match="timestep_shift"):
        flow.draw_pairs([0], [0], (1, 1), shift="sd3", **kw)


def test_hole_at_latent_nearest_vs_any_on_a_hand_made_mask():
    """8x8 mask, 4x4 blocks. Hole pixels (1,1), (1,2) [block (0,0), not its corner], (4,4) [the corner of block
    (1,1)] and (6,1) [block (1,0), not its corner]. "any": blocks (0,0), (1,0), (1,1) are hole; "nearest" reads
    each block's top-left pixel (0,0), (0,4), (4,0), (4,4): only (1,1) is hole, as torch's nearest interpolation."""
    mask = np.zeros((1, 8, 8), np.uint8)
    for y, x in ((1, 1), (1, 2), (4, 4), (6, 1)):
        mask[0, y, x] = 1
    assert hole_at_latent(mask, 4, "any")[0, 0].tolist() == [[1, 0], [1, 1]]
    assert hole_at_latent(mask, 4, "nearest")[0, 0].tolist() == [[0, 0], [0, 1]]
    resized = torch.nn.functional.interpolate(torch.from_numpy(mask)[:, None].float(), size=(2, 2))
    assert resized[0, 0].tolist() == [[0, 0], [0, 1]]  # the official code's call agrees
    rng = np.random.default_rng(0)
    masks = (rng.random((3, 32, 32)) > 0.7).astype(np.uint8)
    expected = torch.nn.functional.interpolate(torch.from_numpy(masks)[:, None].float(), size=(4, 4)).numpy()
    np.testing.assert_array_equal(hole_at_latent(masks, 8, "nearest"), expected)
    with pytest.raises(ValueError, match="mask_downsample"):
        hole_at_latent(mask, 4, "bilinear")


def test_the_new_train_switches_are_checked():
    for key, bad in (("timestep_shift", "sd3"), ("mask_downsample", "max"), ("loss_backend", "cuda")):
        with pytest.raises(ConfigError, match=f"train.{key} must be one of"):
            check_train_config(TrainConfig(**{key: bad}))
    check_train_config(TrainConfig(timestep_shift="none", mask_downsample="nearest", loss_backend="torch"))


def test_paper_preset_is_flux_fill_with_the_official_choices():
    from fyp.config import load_preset

    paper, suite = load_preset("flux-fill-paper").to_dict(), load_preset("flux-fill").to_dict()
    assert paper["train"]["timestep_shift"] == "none" and suite["train"]["timestep_shift"] == "flux"
    assert paper["train"]["mask_downsample"] == "nearest" and suite["train"]["mask_downsample"] == "any"
    assert paper["pairs"]["ties"] == "dense" and suite["pairs"]["ties"] == "average"
    for section, key in (("train", "timestep_shift"), ("train", "mask_downsample"), ("pairs", "ties")):
        paper[section][key] = suite[section][key]
    paper["preset"] = suite["preset"]
    assert paper == suite  # nothing else differs: the two presets stay in step


# -- loss backend -------------------------------------------------------------------------------------
def test_loss_backend_resolution(monkeypatch):
    from fyp.dpo.losses import loss_backend, preference_terms

    assert loss_backend("auto", torch.device("cpu")) == ("torch", preference_terms)
    assert loss_backend("torch", torch.device("cpu")) == ("torch", preference_terms)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ConfigError, match="TRITON_INTERPRET=1"):
        loss_backend("triton", torch.device("cpu"))
    with pytest.raises(ConfigError, match="train.loss_backend must be one of auto, torch, triton"):
        loss_backend("cuda", torch.device("cpu"))


# -- checkpoint trust (issue 12 item 6) ---------------------------------------------------------------
class _Planted:
    """Unpickling this creates a marker file (what a planted checkpoint could do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _fake_checkpoint(root: Path, tag: str = "step-000002") -> Path:
    from fyp.dpo import checkpoints as ck

    folder = root / tag
    (folder / "zero").mkdir(parents=True)
    torch.save({"step": 2, "module": {"w": torch.ones(2)}}, folder / "mp_rank_00_model_states.pt")
    torch.save({"exp_avg": torch.zeros(2)}, folder / "zero" / "optim.pt")
    ck.write_layout(folder, ck.Layout(2, 1, 2, 1))
    shares = [ck.digest_share(folder, rank, 2) for rank in range(2)]  # two ranks' shares, merged
    ck.write_manifest(folder, {**shares[0], **shares[1]})
    ck.write_latest(root, tag)
    return folder


def test_checkpoint_manifest_refuses_planted_changed_and_unlisted_files(tmp_path):
    import pickle

    from fyp.dpo import checkpoints as ck

    root = tmp_path / "checkpoints"
    folder = _fake_checkpoint(root)
    assert ck.latest(root) == ck.Resume("step-000002", ck.Layout(2, 1, 2, 1))
    for rank in range(2):
        ck.verify_share(folder, rank, 2)
    marker = tmp_path / "marker"
    payload = pickle.dumps(_Planted(marker))
    # a file replaced by a pickle that would run code
    model = folder / "mp_rank_00_model_states.pt"
    original = model.read_bytes()
    model.write_bytes(payload)
    with pytest.raises(ck.UntrustedCheckpoint, match="mp_rank_00_model_states.pt does not match the SHA-256"):
        ck.verify_share(folder)
    model.write_bytes(original)
    # an extra file DeepSpeed would glob (zero_pp_rank_*_optim_states.pt)
    (folder / "zero_pp_rank_1_mp_rank_00_optim_states.pt").write_bytes(payload)
    with pytest.raises(ck.UntrustedCheckpoint, match="zero_pp_rank_1_mp_rank_00_optim_states.pt is not in manifest"):
        ck.verify_share(folder)
    (folder / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    (folder / "zero" / "optim.pt").unlink()
    with pytest.raises(ck.UntrustedCheckpoint, match="optim.pt listed in manifest.json is missing"):
        ck.verify_share(folder)
    # a checkpoint folder without a manifest, and a `latest` that leaves the folder
    planted = root / "step-000009"
    planted.mkdir()
    (planted / "mp_rank_00_model_states.pt").write_bytes(payload)
    with pytest.raises(ck.UntrustedCheckpoint, match="has no manifest.json"):
        ck.verify_share(planted)
    (root / "latest").write_text("../../elsewhere")
    with pytest.raises(ck.UntrustedCheckpoint, match="not a checkpoint folder name"):
        ck.latest(root)
    assert not marker.exists()
    pickle.loads(payload)  # the payload is live: the refusals above are what kept the marker away
    assert marker.exists()


def test_trust_records_digests_for_a_checkpoint_one_vouches_for(tmp_path, capsys):
    from fyp.dpo import checkpoints as ck

    folder = _fake_checkpoint(tmp_path / "checkpoints")
    (folder / "manifest.json").unlink()
    assert ck.main(["trust", str(folder)]) == 0
    ck.verify_share(folder)
    assert ck.main(["trust", str(tmp_path)]) == 2
    assert "has no layout.json" in capsys.readouterr().err


def test_model_family_seam():
    """model.kind picks the family; its objective's key (the reference-loss cache's) holds the draw settings,
    so a cache made under one timestep shift is not reused under the other."""
    from types import SimpleNamespace

    from fyp.config import RunConfig
    from fyp.dpo.family import model_family
    from fyp.dpo.flow import FlowMatching, FluxFill
    from fyp.dpo.ref_cache import cache_key

    cfg = RunConfig()
    assert isinstance(model_family(cfg), FluxFill)
    cfg.model.kind = "sdxl"
    with pytest.raises(ConfigError, match="no model family 'sdxl'; valid: flux-fill"):
        model_family(cfg)
    keys = []
    for shift in ("flux", "none"):
        objective = FlowMatching(TrainConfig(timestep_shift=shift), FLUX_SCHEDULER, (4, 4), (4, 16), shared_noise=True,
                                 guidance_embeds=False, device="cpu", dtype=torch.float32)
        keys.append(cache_key(objective, mask_loss=True, normalize="all"))
        batch = SimpleNamespace(latent_w=torch.zeros(2, 4, 16), latent_l=torch.ones(2, 4, 16),
                                condition=torch.zeros(2, 4, 20), prompt_embeds=torch.zeros(2, 3, 8),
                                pooled=torch.zeros(2, 8))
        noised = objective.noised(batch, [0, 1], [0, 0])
        x_t, _, sigma = noised.inputs[:3]
        assert x_t.shape == (4, 4, 16) and torch.equal(sigma[:2], sigma[2:])  # winner and loser share t
        assert torch.allclose(noised.target_w + batch.latent_w, noised.target_l + batch.latent_l)  # shared eps
    assert keys[0] != keys[1] and keys[0]["shift"] == "flux" and keys[1]["shift"] == "none"
