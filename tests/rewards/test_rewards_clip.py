"""The CLIP/BLIP-family rewards, built tiny (same classes, random seeded weights): shape, determinism, batch
invariance, sensitivity to the image, and each score formula on hand-computed cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from fyp.rewards import build
from fyp.rewards.common import ImageTransform, clip_tokenizer_in_code, cosine
from fyp.rewards.imagereward import MEAN, STD

MODELS = ["clipscore", "aesthetic", "imagereward", "pickscore", "hpsv2", "perception"]
# Tiny random CLIPs give negative cosines for most inputs, which CLIPScore clamps to 0; with seed 2 the
# prompt below has positive cosines with these images, so image differences are visible.
SEEDS = {"clipscore": 2}
PROMPTS = ["a red car", "a red car", "a photo of a cat", "a red car", "green trees by the water"]
# Scores of one image computed alone or inside a batch: float32 CPU matmuls may differ in the last bits.
ATOL, RTOL = 1e-5, 1e-5

_cache: dict = {}


def model(name: str, seed: int | None = None):
    seed = SEEDS.get(name, 0) if seed is None else seed
    if (name, seed) not in _cache:
        _cache[(name, seed)] = build(name, tiny=True, device="cpu", seed=seed, batch_size=2)
    return _cache[(name, seed)]


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    base = torch.randint(0, 256, (5, 40, 48, 3), dtype=torch.uint8, generator=g)
    base[3] = 255 - base[0]  # a very different image with the same prompt as image 0
    return base


@pytest.mark.parametrize("name", MODELS)
def test_scores_are_float32_per_image_and_deterministic(name, images):
    scores = model(name).score(images, PROMPTS)
    assert scores.dtype == torch.float32 and scores.shape == (5,) and torch.isfinite(scores).all()
    rebuilt = build(name, tiny=True, device="cpu", seed=SEEDS.get(name, 0), batch_size=2)
    torch.testing.assert_close(rebuilt.score(images, PROMPTS), scores, atol=0, rtol=0)
    other_seed = build(name, tiny=True, device="cpu", seed=SEEDS.get(name, 0) + 10).score(images, PROMPTS)
    assert not torch.allclose(other_seed, scores)


@pytest.mark.parametrize("name", MODELS)
def test_score_does_not_depend_on_the_batch(name, images):
    m = model(name)  # batch_size=2: the 5 images also run as micro-batches 2+2+1
    together = m.score(images, PROMPTS)
    alone = torch.cat([m.score(images[i:i + 1], PROMPTS[i:i + 1]) for i in range(5)])
    order = [4, 2, 0, 3, 1]
    shuffled = m.score(images[order], [PROMPTS[i] for i in order])
    torch.testing.assert_close(alone, together, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(shuffled, together[order], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("name", MODELS)
def test_different_images_get_different_scores(name, images):
    scores = model(name).score(images, PROMPTS)
    assert abs(float(scores[0] - scores[3])) > 1e-5  # same prompt, inverted image
    assert len({round(float(s), 6) for s in scores}) == 5


@pytest.mark.parametrize("name", MODELS)
def test_bad_input_is_refused_with_a_clear_message(name, images):
    with pytest.raises(ValueError, match="uint8"):
        model(name).score(images.float(), PROMPTS)
    with pytest.raises(ValueError, match="prompts"):
        model(name).score(images, PROMPTS[:2])


def test_prompt_matters_for_text_rewards(images):
    for name in ["clipscore", "imagereward", "pickscore", "hpsv2", "perception"]:
        a = model(name).score(images[:2], ["a red car", "a red car"])
        b = model(name).score(images[:2], ["a photo of a cat", "a photo of a cat"])
        assert not torch.allclose(a, b), name
    a = model("aesthetic").score(images[:2], ["a red car"] * 2)
    b = model("aesthetic").score(images[:2], ["a photo of a cat"] * 2)
    torch.testing.assert_close(a, b, atol=0, rtol=0)  # the aesthetic head ignores the prompt


# -- formulas ------------------------------------------------------------------------------------------------
def test_clipscore_is_100_times_the_cosine_clamped_at_zero(images):
    m = model("clipscore")
    img, txt = m.embed(images, PROMPTS)
    cos = cosine(img, txt)
    torch.testing.assert_close(m.score(images, PROMPTS), 100 * cos.clamp(min=0), atol=1e-4, rtol=0)
    # hand-computed: cos = 1/sqrt(2) -> 70.7107; cos = -1 -> 0; cos = 0.6 -> 60
    image = torch.tensor([[1.0, 0.0], [1.0, 0.0], [3.0, 4.0]])
    text = torch.tensor([[1.0, 1.0], [-2.0, 0.0], [1.0, 0.0]])
    torch.testing.assert_close(m.formula(image, text), torch.tensor([100 / math.sqrt(2), 0.0, 60.0]))


def test_pickscore_and_perception_scale_the_cosine_by_exp_logit_scale(images):
    for name in ["pickscore", "perception"]:
        m = model(name)
        img, txt = m.embed(images, PROMPTS)
        expected = m.model.logit_scale.exp() * cosine(img, txt)
        torch.testing.assert_close(m.score(images, PROMPTS), expected, atol=1e-4, rtol=1e-5)
    pick = model("pickscore")
    saved = pick.model.logit_scale.data.clone()
    try:
        pick.model.logit_scale.data.fill_(math.log(100.0))  # PickScore_v1's trained value is ~log(100)
        torch.testing.assert_close(pick.formula(torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, 1.0]])),
                                   torch.tensor([80.0]), atol=1e-4, rtol=0)
    finally:
        pick.model.logit_scale.data.copy_(saved)


def test_hpsv2_is_100_times_the_cosine(images):
    m = model("hpsv2")
    img, txt = m.embed(images, PROMPTS)
    torch.testing.assert_close(m.score(images, PROMPTS), 100 * cosine(img, txt), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(m.formula(torch.tensor([[3.0, 4.0]]), torch.tensor([[-1.0, 0.0]])),
                               torch.tensor([-60.0]))


def test_aesthetic_head_reads_l2_normalised_image_features(images):
    m = build("aesthetic", tiny=True, device="cpu", seed=3)
    img, _ = m.embed(images, PROMPTS)
    with torch.no_grad():
        m.head.weight.zero_()
        m.head.weight[0, 0] = 10.0
        m.head.bias.fill_(0.5)
    expected = 10.0 * img[:, 0] / img.norm(dim=-1) + 0.5
    torch.testing.assert_close(m.score(images, PROMPTS), expected, atol=1e-5, rtol=1e-5)


def test_aesthetic_mlp_head_option_and_unknown_head(images):
    m = build("aesthetic", tiny=True, device="cpu", head="mlp")
    keys = sorted(m.head.state_dict())
    assert keys == sorted(f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias"))
    assert m.head.layers[0].in_features == 16 and m.head.layers[-1].out_features == 1
    assert torch.isfinite(m.score(images[:2], PROMPTS[:2])).all()
    with pytest.raises(ValueError, match="valid heads: linear, mlp"):
        build("aesthetic", tiny=True, head="resnet")


def test_imagereward_normalises_the_mlp_output(images):
    m = build("imagereward", tiny=True, device="cpu", seed=5)
    layers = m.model.mlp.layers
    with torch.no_grad():  # a head that outputs the constant raw = MEAN + STD -> score exactly 1
        for layer in layers:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.zero_()
                layer.bias.zero_()
        layers[-1].bias.fill_(MEAN + STD)
    torch.testing.assert_close(m.score(images, PROMPTS), torch.ones(5), atol=1e-6, rtol=0)
    with torch.no_grad():
        layers[-1].bias.fill_(MEAN)
    torch.testing.assert_close(m.score(images, PROMPTS), torch.zeros(5), atol=1e-6, rtol=0)
    assert (MEAN, STD) == (0.16717362830052426, 1.0333394966054072)


def test_imagereward_tokenises_to_35_tokens_with_blip_specials():
    m = model("imagereward")
    ids, mask = m.tokenize(["a photo of a cat " * 20, "a dog"])
    assert ids.shape == (2, 35) and mask[0].all() and mask[1].sum() == 4  # [CLS] a dog [SEP]
    assert {"[DEC]", "[ENC]"} <= set(m.tokenizer.get_vocab())


def test_imagereward_full_size_architecture_has_the_published_shapes():
    from fyp.rewards.imagereward import ImageRewardConfig, ImageRewardModel

    with torch.device("meta"):
        full = ImageRewardModel(ImageRewardConfig())
    state = full.state_dict()
    assert state["blip.visual_encoder.pos_embed"].shape == (1, 197, 1024)  # ViT-L/16 at 224
    assert state["blip.text_encoder.embeddings.word_embeddings.weight"].shape == (30524, 768)
    assert state["blip.text_encoder.encoder.layer.11.crossattention.self.key.weight"].shape == (768, 1024)
    assert state["mlp.layers.0.weight"].shape == (1024, 768)
    assert sum(v.numel() for v in state.values()) == 446_206_689


# -- preprocessing and tokenisers ----------------------------------------------------------------------------
def test_transform_is_exact_at_model_resolution_and_close_to_pil_when_resizing():
    g = torch.Generator().manual_seed(1)
    img = torch.randint(0, 256, (1, 32, 32, 3), dtype=torch.uint8, generator=g)
    t = ImageTransform(32)
    out = t(img, torch.device("cpu"), torch.float32)
    mean, std = torch.tensor(t.mean).view(3, 1, 1), torch.tensor(t.std).view(3, 1, 1)
    torch.testing.assert_close(out[0], (img[0].permute(2, 0, 1) / 255.0 - mean) / std)
    # a smooth 96x64 image resized to 32 (short side) + centre crop, against PIL's bicubic
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 96), torch.linspace(0, 1, 64), indexing="ij")
    smooth = torch.stack([yy, xx, (yy + xx) / 2], -1).mul(255).round().to(torch.uint8)[None]
    ours = t(smooth, torch.device("cpu"), torch.float32)[0] * std + mean
    pil = Image.fromarray(smooth[0].numpy()).resize((32, 48), Image.BICUBIC).crop((0, 8, 32, 40))
    ref = torch.from_numpy(np.array(pil)).permute(2, 0, 1).float() / 255.0
    assert ours.shape == (3, 32, 32) and (ours - ref).abs().max() < 2 / 255


def test_squash_transform_resizes_both_sides():
    img = torch.zeros(2, 20, 60, 3, dtype=torch.uint8)
    out = ImageTransform(16, (0.5,) * 3, (0.5,) * 3, resize_mode="squash", interpolation="bilinear")(
        img, torch.device("cpu"), torch.float32)
    assert out.shape == (2, 3, 16, 16) and torch.allclose(out, torch.full_like(out, -1.0))


def test_clip_tokenizer_built_in_code_matches_open_clip():
    import open_clip

    prompts = ["A photo of a cat, in the garden!", "Inpainting and OUTPAINTING, 2x faster"]
    ours = clip_tokenizer_in_code()(prompts, padding="max_length", truncation=True, max_length=77).input_ids
    ref = open_clip.tokenize(prompts).tolist()
    for a, b in zip(ours, ref):
        n = b.index(49407) + 1
        assert a[:n] == b[:n]


def test_unknown_reward_and_missing_weights_fail_clearly():
    with pytest.raises(ValueError, match="unknown reward 'clipscor'"):
        build("clipscor", tiny=True)
    with pytest.raises(ValueError, match="head_path"):
        build("aesthetic", tiny=False, pretrained="/nonexistent", head="linear")
