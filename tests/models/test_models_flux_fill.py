"""The FLUX.1 Fill builder and its helpers, on the tiny random-weight pipeline."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fyp.config import ConfigError, ModelConfig, load_preset
from fyp.models import (
    build_pipeline,
    build_tiny_components,
    decode_latents,
    denoise,
    encode_condition,
    encode_image_latents,
    encode_prompt,
    initial_noise,
    latent_shape,
    pack_latents,
    resolve_device,
    resolve_dtype,
    unpack_latents,
)
from fyp.models.batch_invariant import batch_invariant, batch_invariant_linear
from fyp.devices import DeviceError
from fyp.models.flux_fill import ModelError

RES = 64


@pytest.fixture(scope="module")
def pipe():
    cfg = load_preset("tiny")
    return build_pipeline(cfg.model, max_sequence_length=cfg.sampling.max_sequence_length)


@pytest.fixture(scope="module")
def sample():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (RES, RES, 3), dtype=np.uint8)
    mask = np.zeros((RES, RES), np.uint8)
    mask[16:40, 8:48] = 1
    return image, mask


def test_tiny_weights_are_a_function_of_the_seed():
    before = torch.random.get_rng_state()
    a, b, c = (build_tiny_components(seed)["transformer"].state_dict() for seed in (3, 3, 4))
    assert torch.equal(torch.random.get_rng_state(), before), "building must not move the global RNG"
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_tiny_pipeline_shapes_follow_the_flux_fill_layout(pipe, sample):
    from diffusers import FluxFillPipeline

    assert isinstance(pipe, FluxFillPipeline)
    c, h, w = latent_shape(ModelConfig(tiny=True), RES)
    s = pipe.vae_scale_factor
    assert (h, w) == (RES // s, RES // s) and c == pipe.vae.config.latent_channels
    assert pipe.transformer.config.in_channels == 4 * c + 4 * c + 4 * s * s
    assert not pipe.transformer.training and not pipe.text_encoder_2.training
    assert latent_shape(ModelConfig(tiny=False), 512) == (16, 64, 64)
    with pytest.raises(ConfigError, match="multiple of 16"):
        latent_shape(ModelConfig(tiny=False), 520)

    image, mask = sample
    cond = encode_condition(pipe, image, mask)
    assert cond.shape == (1, (h // 2) * (w // 2), 4 * c + 4 * s * s)
    # The mask channels of the condition carry the hole: 1 where the token covers hole pixels.
    mask_tokens = cond[0, :, 4 * c:]
    expected = pack_latents(torch.from_numpy(mask).float().view(1, h, s, w, s).permute(0, 2, 4, 1, 3)
                            .reshape(1, s * s, h, w))[0]
    assert torch.equal(mask_tokens, expected)
    x0 = encode_image_latents(pipe, image)
    assert x0.shape == (1, c, h, w)
    assert torch.equal(unpack_latents(pack_latents(x0), h, w), x0)


def test_prompt_encoding(pipe):
    one = encode_prompt(pipe, "a red circle on a blue gradient", 32)
    two = encode_prompt(pipe, ["a red circle on a blue gradient", "a green square"], 32)
    assert one.prompt_embeds.shape == (1, 32, 32) and one.pooled.shape == (1, 32)
    assert torch.allclose(two.prompt_embeds[:1], one.prompt_embeds, atol=1e-6)
    assert not torch.allclose(two.prompt_embeds[1], one.prompt_embeds[0])
    assert one.repeat(3).prompt_embeds.shape[0] == 3


def test_noise_depends_on_its_own_seed_only(pipe):
    together = initial_noise(pipe, [11, 12, 13], RES, RES)
    alone = torch.cat([initial_noise(pipe, [seed], RES, RES) for seed in (11, 12, 13)])
    assert torch.equal(together, alone)
    assert not torch.equal(together[0], together[1])


def test_candidates_do_not_depend_on_the_batch(pipe, sample):
    image, mask = sample
    embeds = encode_prompt(pipe, "a red circle", 32)
    cond = encode_condition(pipe, image, mask)
    noise = initial_noise(pipe, [1, 2, 3, 4, 5], RES, RES)
    kw = dict(height=RES, width=RES, steps=2, guidance=30.0)
    batched = denoise(pipe, embeds, cond, noise, **kw)
    single = torch.cat([denoise(pipe, embeds, cond, noise[i:i + 1], **kw) for i in range(5)])
    split = torch.cat([denoise(pipe, embeds, cond, noise[:2], **kw), denoise(pipe, embeds, cond, noise[2:], **kw)])
    assert torch.equal(batched, single) and torch.equal(batched, split)
    images, latents = decode_latents(pipe, batched, RES, RES)
    images_single = np.concatenate([decode_latents(pipe, single[i:i + 1], RES, RES)[0] for i in range(5)])
    assert images.dtype == np.uint8 and images.shape == (5, RES, RES, 3)
    assert np.array_equal(images, images_single)
    assert latents.shape == (5, *latent_shape(ModelConfig(tiny=True), RES))
    assert (images[0] != images[1]).mean() > 0.5, "different seeds must give different candidates"


@pytest.mark.parametrize("shape", [(5,), (3, 5), (2, 7, 5), (2, 3, 4, 5)])
def test_batch_invariant_linear_matches_linear(shape):
    gen = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(shape, generator=gen), torch.randn(6, 5, generator=gen), torch.randn(6, generator=gen)
    torch.testing.assert_close(batch_invariant_linear(x, w, b), F.linear(x, w, b), rtol=1e-5, atol=1e-5)
    model = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.GELU(), torch.nn.Linear(6, 3))
    plain = model(x)
    with batch_invariant(model):
        inside = model(x)
        assert "forward" in model[0].__dict__
    assert "forward" not in model[0].__dict__  # restored
    torch.testing.assert_close(inside, plain, rtol=1e-5, atol=1e-5)


def test_bad_model_settings_are_clear_errors(monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match="valid dtypes"):
        resolve_dtype("float8")
    assert resolve_dtype("bfloat16") is torch.bfloat16
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA device"):
            resolve_device("cuda")
        assert resolve_device("auto").type == "cpu"
    with pytest.raises(ConfigError, match="valid kinds: flux-fill"):
        build_pipeline(ModelConfig(kind="sdxl"))
    with pytest.raises(ConfigError, match="max_sequence_length"):
        build_pipeline(ModelConfig(), max_sequence_length=1024)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="cannot load FLUX.1 Fill from"):
        build_pipeline(ModelConfig(tiny=False, pretrained=str(tmp_path / "no-such-model")))


def test_denoise_reproduces_the_diffusers_pipeline(pipe, sample, monkeypatch):
    """`denoise` restates FluxFillPipeline.__call__'s loop: same noise, prompt and image -> same latents.

    The pipeline samples the VAE posterior of the masked image; our condition uses its mean, so the
    pipeline's sampling is pointed at the mean for this comparison.
    """
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mode())
    image, mask = sample
    noise = initial_noise(pipe, [5, 6], RES, RES)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # both sides with the same reduction order (see fyp/sampling/generate.py)
    try:
        theirs = pipe(
            prompt="a red circle", image=torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255,
            mask_image=torch.from_numpy(mask)[None, None].float(), height=RES, width=RES, num_inference_steps=3,
            guidance_scale=30.0, latents=noise, num_images_per_prompt=2, output_type="latent",
            max_sequence_length=32,
        ).images
        ours = denoise(pipe, encode_prompt(pipe, "a red circle", 32), encode_condition(pipe, image, mask), noise,
                       height=RES, width=RES, steps=3, guidance=30.0, batch_invariant=False)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_encoders_only_pipeline_never_reads_the_transformer(pipe, sample, tmp_path, monkeypatch):
    """`with_transformer=False` (the trainer's latent cache, eval of a trained transformer): the VAE and
    text encoders give the same encodings, and a checkpoint whose transformer weights are gone still
    loads, so they were never read."""
    from fyp.models.flux_fill import fill_in_channels

    cfg = load_preset("tiny")
    assert fill_in_channels(pipe) == pipe.transformer.config.in_channels
    bare = build_pipeline(cfg.model, max_sequence_length=cfg.sampling.max_sequence_length, with_transformer=False)
    assert bare.transformer is None and fill_in_channels(bare) == fill_in_channels(pipe)
    image, mask = sample
    assert torch.equal(encode_condition(bare, image, mask), encode_condition(pipe, image, mask))
    assert torch.equal(encode_image_latents(bare, image[None]), encode_image_latents(pipe, image[None]))
    ours, theirs = encode_prompt(bare, ["a red circle"], 16), encode_prompt(pipe, ["a red circle"], 16)
    assert torch.equal(ours.prompt_embeds, theirs.prompt_embeds) and torch.equal(ours.pooled, theirs.pooled)

    folder = tmp_path / "flux-fill"
    pipe.save_pretrained(folder)
    (folder / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = ModelConfig(tiny=False, pretrained=str(folder))
    loaded = build_pipeline(model, max_sequence_length=16, with_transformer=False)
    assert loaded.transformer is None
    assert torch.equal(encode_condition(loaded, image, mask), encode_condition(pipe, image, mask))
    with pytest.raises(ModelError, match="cannot load FLUX.1 Fill"):
        build_pipeline(model, max_sequence_length=16)
