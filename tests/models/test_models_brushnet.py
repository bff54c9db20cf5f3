"""BrushNet on mainline blocks: the official key layout, the injection points, the pipeline helpers.

The reference forwards (tests/fixtures_brushnet.py) are written independently of fyp.models.brushnet, from the official fork's
code (TencentARC/BrushNet: models/brushnet.py, unets/unet_2d_condition.py, unets/unet_2d_blocks.py):
- the U-Net side runs mainline `UNet2DConditionModel.__call__` itself, with forward hooks that add the
  branch's samples where the fork's modified blocks add them (a pre-hook on the first down block for the
  conv_in sample, whose skip the U-Net took before; hooks on every resnet of a plain block, every attention
  of a cross-attention block, every down/upsampler, and the mid block);
- the branch side runs mainline `DownBlock2D.forward` (which returns the per-layer states the fork zero-convs)
  and captures the up blocks' per-resnet / upsampler outputs with hooks (the fork's `return_res_samples`).
"""
from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch

from fyp.config import ConfigError, ModelConfig, load_preset
from fyp.models import build_pipeline, helpers, latent_shape
from fyp.models.brushnet import (BrushNetModel, BrushNetSamples, brushnet_config_from_unet, brushnet_from_unet,
                                 keep_mask_channel, predict_noise, unet_forward)
from fyp.models.brushnet_pipeline import build_tiny_components, tiny_unet_config
from fixtures_brushnet import reference_branch, reference_unet

RES = 64


# -- the official key layout, written from the fork's BrushNetModel.__init__ ---------------------------
def _resnet_keys(prefix: str, cin: int, cout: int, temb: int) -> dict:
    keys = {f"{prefix}.norm1.weight": (cin,), f"{prefix}.norm1.bias": (cin,),
            f"{prefix}.conv1.weight": (cout, cin, 3, 3), f"{prefix}.conv1.bias": (cout,),
            f"{prefix}.time_emb_proj.weight": (cout, temb), f"{prefix}.time_emb_proj.bias": (cout,),
            f"{prefix}.norm2.weight": (cout,), f"{prefix}.norm2.bias": (cout,),
            f"{prefix}.conv2.weight": (cout, cout, 3, 3), f"{prefix}.conv2.bias": (cout,)}
    if cin != cout:
        keys.update({f"{prefix}.conv_shortcut.weight": (cout, cin, 1, 1), f"{prefix}.conv_shortcut.bias": (cout,)})
    return keys


def _zero(prefix: str, c: int) -> dict:
    return {f"{prefix}.weight": (c, c, 1, 1), f"{prefix}.bias": (c,)}


def official_layout(channels, layers: int, in_channels: int = 4, conditioning: int = 5) -> dict:
    """key -> shape of the fork's BrushNetModel for U-Net block widths `channels` and `layers` per block."""
    c0, temb, n = channels[0], channels[0] * 4, len(channels)
    keys = {"conv_in_condition.weight": (c0, in_channels + conditioning, 3, 3), "conv_in_condition.bias": (c0,),
            "time_embedding.linear_1.weight": (temb, c0), "time_embedding.linear_1.bias": (temb,),
            "time_embedding.linear_2.weight": (temb, temb), "time_embedding.linear_2.bias": (temb,)}
    zeros = [c0]
    out = c0
    for i in range(n):
        cin, out = out, channels[i]
        for j in range(layers):
            keys.update(_resnet_keys(f"down_blocks.{i}.resnets.{j}", cin if j == 0 else out, out, temb))
            zeros.append(out)
        if i < n - 1:
            keys.update({f"down_blocks.{i}.downsamplers.0.conv.weight": (out, out, 3, 3),
                         f"down_blocks.{i}.downsamplers.0.conv.bias": (out,)})
            zeros.append(out)
    for k, c in enumerate(zeros):
        keys.update(_zero(f"brushnet_down_blocks.{k}", c))
    for j in range(2):
        keys.update(_resnet_keys(f"mid_block.resnets.{j}", channels[-1], channels[-1], temb))
    keys.update(_zero("brushnet_mid_block", channels[-1]))
    rev = list(reversed(channels))
    out, ups = rev[0], []
    for i in range(n):
        prev, out = out, rev[i]
        skip_in = rev[min(i + 1, n - 1)]
        for j in range(layers + 1):
            res_skip = skip_in if j == layers else out
            cin = (prev if j == 0 else out) + res_skip
            keys.update(_resnet_keys(f"up_blocks.{i}.resnets.{j}", cin, out, temb))
            ups.append(out)
        if i < n - 1:
            keys.update({f"up_blocks.{i}.upsamplers.0.conv.weight": (out, out, 3, 3),
                         f"up_blocks.{i}.upsamplers.0.conv.bias": (out,)})
            ups.append(out)
    for k, c in enumerate(ups):
        keys.update(_zero(f"brushnet_up_blocks.{k}", c))
    return keys


def test_sd15_branch_has_the_published_keys_shapes_and_size():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(cross_attention_dim=768)  # SD1.5's U-Net config (diffusers' defaults + 768)
        branch = BrushNetModel(**brushnet_config_from_unet(unet.config))
    mine = {k: tuple(v.shape) for k, v in branch.state_dict().items()}
    official = official_layout((320, 640, 1280, 1280), 2)
    assert mine == official
    assert len(mine) == 322
    assert mine["conv_in_condition.weight"] == (320, 9, 3, 3)
    assert len(branch.brushnet_down_blocks) == 12 and len(branch.brushnet_up_blocks) == 15
    assert not any(k.startswith("conv_out") or ".attentions." in k for k in mine)
    params = sum(v.numel() for v in branch.state_dict().values())
    assert 618e6 < params < 620e6, params


def test_official_layout_state_dict_loads_strictly_and_saves_in_the_official_folder(tmp_path):
    unet = build_tiny_components(0)["unet"]
    cfg = brushnet_config_from_unet(unet.config)
    layout = official_layout(tiny_unet_config()["block_out_channels"], tiny_unet_config()["layers_per_block"])
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=gen) for k, shape in layout.items()}
    branch = BrushNetModel(**cfg)
    branch.load_state_dict(state, strict=True)
    assert all(torch.equal(branch.state_dict()[k], v) for k, v in state.items())
    # Saved as the fork's save_pretrained writes it, and read back by from_pretrained.
    branch.save_pretrained(tmp_path / "brushnet", safe_serialization=True)
    assert sorted(p.name for p in (tmp_path / "brushnet").iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    import json

    config = json.loads((tmp_path / "brushnet" / "config.json").read_text())
    assert config["_class_name"] == "BrushNetModel" and config["conditioning_channels"] == 5
    assert config["mid_block_type"] == "MidBlock2D" and set(config["down_block_types"]) == {"DownBlock2D"}
    again = BrushNetModel.from_pretrained(tmp_path / "brushnet")
    assert all(torch.equal(again.state_dict()[k], v) for k, v in state.items())


def test_a_wrong_key_layout_is_refused():
    unet = build_tiny_components(0)["unet"]
    branch = BrushNetModel(**brushnet_config_from_unet(unet.config))
    state = branch.state_dict()
    state["conv_out.weight"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="conv_out"):
        branch.load_state_dict(state, strict=True)


def test_from_unet_does_not_tie_the_conv_in_bias():
    unet = build_tiny_components(0)["unet"]
    branch = brushnet_from_unet(unet)
    assert branch.conv_in_condition.bias is not unet.conv_in.bias
    assert branch.conv_in_condition.bias.data_ptr() != unet.conv_in.bias.data_ptr()
    assert torch.equal(branch.conv_in_condition.bias, unet.conv_in.bias)
    c = unet.config.in_channels
    w = branch.conv_in_condition.weight
    assert torch.equal(w[:, :c], unet.conv_in.weight) and torch.equal(w[:, c:2 * c], unet.conv_in.weight)
    assert torch.count_nonzero(w[:, 2 * c:]) == 0
    unet.requires_grad_(False)
    assert branch.conv_in_condition.bias.requires_grad  # trainable although the U-Net is frozen


# -- the forward: references written from the fork ------------------------------------------------
@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    p = build_tiny_components(1)
    with torch.no_grad():  # every branch weight random and not small: each sample matters
        for param in p["brushnet"].parameters():
            param.add_(torch.randn_like(param) * 0.2)
    return p


@pytest.fixture(scope="module")
def inputs():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 16, 16, generator=gen)
    cond = torch.randn(2, 5, 16, 16, generator=gen)
    text = torch.randn(2, 7, 32, generator=gen)
    return x, torch.tensor([10, 700]), text, cond


@torch.no_grad()
def test_branch_samples_match_the_official_forward(parts, inputs):
    x, t, text, cond = inputs
    mine = parts["brushnet"](x, t, text, cond)
    ref = reference_branch(parts["brushnet"], x, t, text, cond)
    assert len(mine.down) == len(ref.down) == len(parts["brushnet"].brushnet_down_blocks)
    assert len(mine.up) == len(ref.up) == len(parts["brushnet"].brushnet_up_blocks)
    for a, b in zip(mine.down + [mine.mid] + mine.up, ref.down + [ref.mid] + ref.up):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@torch.no_grad()
def test_unet_forward_without_samples_is_the_mainline_unet(parts, inputs):
    x, t, text, _ = inputs
    assert torch.equal(unet_forward(parts["unet"], x, t, text, None),
                       parts["unet"](x, t, encoder_hidden_states=text, return_dict=False)[0])


@torch.no_grad()
def test_samples_are_added_at_the_official_points(parts, inputs):
    x, t, text, cond = inputs
    samples = parts["brushnet"](x, t, text, cond)
    mine = unet_forward(parts["unet"], x, t, text, samples)
    ref = reference_unet(parts["unet"], x, t, text, samples)
    torch.testing.assert_close(mine, ref, rtol=0, atol=1e-5)
    assert (mine - parts["unet"](x, t, encoder_hidden_states=text).sample).abs().max() > 1e-2  # the branch matters
    # The whole step, as the official pipeline calls it: branch then U-Net.
    torch.testing.assert_close(predict_noise(parts["unet"], parts["brushnet"], x, t, text, cond), ref, rtol=0, atol=1e-5)


@torch.no_grad()
def test_a_moved_injection_point_is_detected(parts, inputs):
    """Adding the conv_in sample before the first skip (instead of after) changes the result: the check above
    would fail for that forward. Likewise every single sample reaches the output through its own point."""
    x, t, text, cond = inputs
    samples = parts["brushnet"](x, t, text, cond)
    right = reference_unet(parts["unet"], x, t, text, samples)
    moved = reference_unet(parts["unet"], x, t, text, samples, move_conv_in=True)
    assert (right - moved).abs().max() > 1e-3
    mine = unet_forward(parts["unet"], x, t, text, samples)
    assert (mine - moved).abs().max() > 1e-3


@torch.no_grad()
def test_each_sample_changes_the_output_only_through_its_own_point(parts, inputs):
    """Perturb one sample at a time: the output moves (each is used), and exactly as the hook reference
    says it should with that one sample perturbed (so the perturbation enters at that sample's point)."""
    x, t, text, cond = inputs
    base = parts["brushnet"](x, t, text, cond)
    out0 = unet_forward(parts["unet"], x, t, text, base)
    n = len(base.down) + 1 + len(base.up)
    gen = torch.Generator().manual_seed(5)
    for index in range(n):
        pert = BrushNetSamples([d.clone() for d in base.down], base.mid.clone(), [u.clone() for u in base.up])
        flat = pert.down + [pert.mid] + pert.up
        flat[index].add_(torch.randn(flat[index].shape, generator=gen))
        mine = unet_forward(parts["unet"], x, t, text, pert)
        assert (mine - out0).abs().max() > 1e-6, f"sample {index} has no effect"
        torch.testing.assert_close(mine, reference_unet(parts["unet"], x, t, text, pert), rtol=0, atol=1e-5)


def test_keep_mask_channel_inverts_and_nearest_downsamples():
    hole = torch.zeros(1, 1, 8, 8)
    hole[0, 0, 0:4, 2:6] = 1
    keep = keep_mask_channel(hole, (4, 4))
    expected = 1 - hole[:, :, ::2, ::2]
    assert torch.equal(keep, expected)


# -- the pipeline helpers ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipe():
    cfg = load_preset("tiny-brushnet")
    return build_pipeline(cfg.model)


@pytest.fixture(scope="module")
def sample():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (RES, RES, 3), dtype=np.uint8)
    mask = np.zeros((RES, RES), np.uint8)
    mask[16:40, 8:48] = 1
    return image, mask


def test_condition_is_masked_image_latents_and_keep_mask(pipe, sample):
    image, mask = sample
    ops = helpers(pipe)
    cond = ops.encode_condition(pipe, image, mask)
    s = pipe.vae_scale_factor
    assert cond.shape == (1, 5, RES // s, RES // s)
    keep = cond[0, 4].numpy()
    assert np.array_equal(keep, 1 - mask[::s, ::s])  # 1 = keep at the branch's edge, nearest
    black = image.copy()
    black[mask > 0] = 0
    torch.testing.assert_close(cond[:, :4], ops.encode_image_latents(pipe, black), rtol=0, atol=1e-5)
    assert latent_shape(ModelConfig(kind="brushnet", tiny=True), RES) == (4, RES // s, RES // s)
    assert latent_shape(ModelConfig(kind="brushnet", tiny=False), 512) == (4, 64, 64)
    with pytest.raises(ConfigError, match="model.kind"):
        build_pipeline(ModelConfig(kind="sdxl"))


def test_candidates_do_not_depend_on_the_batch(pipe, sample):
    from fyp.sampling.generate import generate_candidates

    image, mask = sample
    cfg = load_preset("tiny-brushnet").sampling
    seeds = [11, 12, 13]
    together = generate_candidates(pipe, "a red circle", image, mask, seeds, cfg)
    one = copy.deepcopy(cfg)
    one.batch_size = 1
    alone = generate_candidates(pipe, "a red circle", image, mask, seeds[1:2], one)
    assert np.array_equal(together.images[1], alone.images[0])
    assert np.array_equal(together.latents[1], alone.latents[0])
    assert not np.array_equal(together.images[0], together.images[1])


def test_guidance_mixes_unconditional_and_conditional_predictions(pipe, sample):
    """guidance 1 is the conditional prediction alone; 7.5 differs from it."""
    image, mask = sample
    ops = helpers(pipe)
    embeds = ops.encode_prompt(pipe, "a red circle")
    cond = ops.encode_condition(pipe, image, mask)
    noise = ops.initial_noise(pipe, [1], RES, RES)
    plain = ops.denoise(pipe, embeds, cond, noise, steps=2, guidance=1.0)
    guided = ops.denoise(pipe, embeds, cond, noise, steps=2, guidance=7.5)
    assert plain.shape == noise.shape and (plain - guided).abs().max() > 1e-4
    assert re.match("UniPC", type(pipe.scheduler).__name__)
