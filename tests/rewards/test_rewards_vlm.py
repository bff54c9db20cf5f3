"""VLM-based rewards (vqascore, unifiedreward, hpsv3) with tiny random-weight models built in code."""
from __future__ import annotations

import json
import math

import pytest
import torch

from fyp.rewards import build
from fyp.rewards.vlm_common import parse_final_score

PROMPTS = ["a red cat on a mat", "a dog", "a blue house under a cloudy sky"]


def _images(seed: int = 0, n: int = 3, h: int = 40, w: int = 56) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, h, w, 3), dtype=torch.uint8, generator=g)


@pytest.fixture(scope="module")
def rewards():
    return {
        "vqascore": build("vqascore", tiny=True, device="cpu"),
        "vqascore-vlm": build("vqascore", tiny=True, device="cpu", backend="vlm"),
        "hpsv3": build("hpsv3", tiny=True, device="cpu"),
        "unifiedreward": build("unifiedreward", tiny=True, device="cpu"),
    }


@pytest.mark.parametrize("key", ["vqascore", "vqascore-vlm", "hpsv3", "unifiedreward"])
def test_scores_a_batch_float32_and_batch_invariant(rewards, key):
    reward = rewards[key]
    images = _images()
    batch = reward.score(images, PROMPTS)
    assert batch.dtype == torch.float32 and batch.shape == (3,) and batch.device.type == "cpu"
    alone = torch.cat([reward.score(images[i:i + 1], PROMPTS[i:i + 1]) for i in range(3)])
    # generation (unifiedreward) is compared on its answers; NaN == NaN there
    torch.testing.assert_close(batch, alone, rtol=1e-5, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("key", ["vqascore", "vqascore-vlm", "hpsv3"])
def test_different_images_get_different_scores(rewards, key):
    scores = rewards[key].score(_images(1), [PROMPTS[0]] * 3)
    assert torch.isfinite(scores).all()
    assert (scores.max() - scores.min()) > 1e-3 * scores.abs().max(), scores
    if key.startswith("vqascore"):
        assert ((scores > 0) & (scores < 1)).all()  # a probability


@pytest.mark.parametrize("name,options", [("vqascore", {}), ("vqascore", {"backend": "vlm"}), ("hpsv3", {}),
                                          ("unifiedreward", {})])
def test_deterministic_across_builds_and_seed_matters(name, options):
    images = _images(2, n=2)
    first = build(name, tiny=True, device="cpu", **options)
    a = first.score(images, PROMPTS[:2])
    b = build(name, tiny=True, device="cpu", **options).score(images, PROMPTS[:2])
    torch.testing.assert_close(a, b, equal_nan=True, rtol=0, atol=0)
    if name != "unifiedreward":  # a tiny model's answer is NaN whatever the seed
        c = build(name, tiny=True, device="cpu", seed=1, **options).score(images, PROMPTS[:2])
        assert not torch.allclose(a, c)


def test_bad_input_is_a_clear_error(rewards):
    with pytest.raises(ValueError, match="uint8"):
        rewards["hpsv3"].score(torch.zeros(1, 8, 8, 3), ["x"])
    with pytest.raises(ValueError, match="1 images but 2 prompts"):
        rewards["vqascore"].score(_images(n=1), ["x", "y"])
    with pytest.raises(ValueError, match="unknown backend"):
        build("unifiedreward", tiny=True, backend="grpc")


# ---------------------------------------------------------------------------------------------------- vqascore
def test_vqascore_formulas_against_a_manual_decoder_pass(rewards):
    reward = rewards["vqascore"]
    model, tok = reward.model, reward.tokenizer
    images = _images(3, n=2)
    before, after = reward._chunks(PROMPTS[0])
    # the SPEC's question inside t2v_metrics' t5_chat layout, with </s> after each chunk
    assert tok.decode(after, skip_special_tokens=True).startswith('Does this figure show "a red cat on a mat"?')
    assert before[-1] == after[-1] == tok.eos_token_id
    from fyp.rewards.vqascore import _pad_to_square_and_resize
    pixels = _pad_to_square_and_resize(images, 28)
    embeds, mask = model.multimodal_embeds(pixels, [before] * 2, [after] * 2)
    n_image = (28 // 14) ** 2
    assert embeds.shape[1] == len(before) + n_image + len(after) and mask.all()
    yes, eos = tok("Yes").input_ids
    assert eos == tok.eos_token_id
    logits = model(inputs_embeds=embeds, attention_mask=mask,
                   decoder_input_ids=torch.tensor([[0, yes]] * 2)).logits.float()
    p = logits.softmax(-1)
    torch.testing.assert_close(reward.score(images, [PROMPTS[0]] * 2), p[:, 0, yes])
    t2v = build("vqascore", tiny=True, device="cpu", formula="t2v_metrics")
    expected = torch.sqrt(p[:, 0, yes] * p[:, 1, eos])  # exp(-mean CE) over "Yes </s>"
    torch.testing.assert_close(t2v.score(images, [PROMPTS[0]] * 2), expected, rtol=1e-4, atol=1e-7)


def test_vqascore_pads_non_square_images_with_the_clip_mean():
    from fyp.rewards.vqascore import CLIP_MEAN, CLIP_STD, _pad_to_square_and_resize
    image = torch.full((1, 10, 28, 3), 255, dtype=torch.uint8)
    x = _pad_to_square_and_resize(image, 28)
    corner = x[0, :, 0, 0]
    expected = torch.tensor([(int(m * 255) / 255 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD)])
    torch.testing.assert_close(corner, expected, atol=1e-6, rtol=0)
    centre = x[0, :, 14, 14]
    torch.testing.assert_close(centre, torch.tensor([(1 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD)]))


def test_vqascore_loads_a_t2v_metrics_style_checkpoint_directory(tmp_path, rewards):
    """config.json with t2v_metrics' mm_* fields + safetensors with its parameter names -> same scores."""
    from safetensors.torch import save_file
    reward = rewards["vqascore"]
    model = reward.model
    config = model.config.to_dict()
    config.update(mm_vision_tower=str(tmp_path / "clip"), mm_vision_select_layer=-2, mm_projector_type="mlp2x_gelu",
                  mm_hidden_size=32, model_type="clip_t5", architectures=["CLIPT5ForConditionalGeneration"])
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    tower = "vision_tower.vision_tower."
    state = {(tower + "vision_model." + k[len(tower):] if k.startswith(tower) else k): v.contiguous()
             for k, v in model.state_dict().items()}  # t2v_metrics (transformers 4) names
    assert "mm_projector.0.weight" in state and "mm_projector.2.weight" in state
    assert "vision_tower.vision_tower.vision_model.embeddings.patch_embedding.weight" in state
    state.pop("encoder.embed_tokens.weight", None), state.pop("decoder.embed_tokens.weight", None)  # tied to shared
    save_file(state, str(tmp_path / "ckpt" / "model.safetensors"))
    model.vision_tower.vision_tower.config.save_pretrained(tmp_path / "clip")
    reward.tokenizer.save_pretrained(tmp_path / "tok")
    loaded = build("vqascore", pretrained=str(tmp_path / "ckpt"), tokenizer=str(tmp_path / "tok"), device="cpu")
    images = _images(4, n=2)
    torch.testing.assert_close(loaded.score(images, PROMPTS[:2]), reward.score(images, PROMPTS[:2]))


# ----------------------------------------------------------------------------------------------- unifiedreward
@pytest.mark.parametrize("text,expected", [
    ("cat (object): 1\nFinal Score: 4", 4.0),
    ("Final Score: 3.5 because ...", 3.5),
    ("final score:5", 5.0),
    ("Final Score: **2**", 2.0),
    ("Final Score: 4. Then Final Score: 1", 4.0),  # the first number after the first "Final Score:"
    ("Score: 4", math.nan),
    ("Final Score: seven", math.nan),
    ("Final Score: 7", math.nan),  # outside 1-5
    ("Final Score: 0", math.nan),
    ("", math.nan),
])
def test_parse_final_score(text, expected):
    got = parse_final_score(text)
    assert (math.isnan(got) and math.isnan(expected)) or got == expected


def test_unifiedreward_counts_unparseable_answers_of_the_real_tiny_model(rewards):
    reward = rewards["unifiedreward"]
    before = reward.failures
    scores = reward.score(_images(5, n=2), PROMPTS[:2])
    answers = reward.last_answers
    assert len(answers) == 2 and all(isinstance(a, str) and a for a in answers)
    expected = [parse_final_score(a) for a in answers]
    assert torch.isnan(scores).sum() == sum(math.isnan(e) for e in expected) == reward.failures - before
    assert reward.failures - before == 2  # a random tiny model never writes "Final Score:"


def test_unifiedreward_uses_the_pointwise_prompt_and_greedy_answers_are_batch_invariant(rewards):
    reward = rewards["unifiedreward"]
    images = _images(6)
    reward.score(images, PROMPTS)
    together = list(reward.last_answers)
    alone = []
    for i in range(3):
        reward.score(images[i:i + 1], PROMPTS[i:i + 1])
        alone += reward.last_answers
    assert together == alone
    assert len(set(together)) > 1  # the answer depends on the image / prompt
    from fyp.rewards.unifiedreward import POINTWISE_PROMPT
    assert "Final Score:" in POINTWISE_PROMPT and POINTWISE_PROMPT.endswith("Text Caption: [{prompt}]")


# ----------------------------------------------------------------------------------------------------- hpsv3
def test_hpsv3_head_formula_on_a_hand_computed_case():
    """x = [1, -2]; layer 1 = identity -> relu -> [1, 0]; layer 2: every row [2, 5] -> 2 each (16 of them);
    layer 3: mu row all 0.5, bias 1 -> 16 * 2 * 0.5 + 1 = 17; sigma row all -0.25 -> -8."""
    from fyp.rewards.hpsv3 import RewardHead
    head = RewardHead(hidden=2, inner=2).eval()
    with torch.no_grad():
        head[0].weight.copy_(torch.eye(2)), head[0].bias.zero_()
        head[3].weight.copy_(torch.tensor([[2.0, 5.0]]).repeat(16, 1)), head[3].bias.zero_()
        head[5].weight.copy_(torch.stack([torch.full((16,), 0.5), torch.full((16,), -0.25)]))
        head[5].bias.copy_(torch.tensor([1.0, 0.0]))
    out = head(torch.tensor([[1.0, -2.0]]))
    torch.testing.assert_close(out, torch.tensor([[17.0, -8.0]]))
    assert [type(m).__name__ for m in head] == ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Linear"]


def test_hpsv3_reads_mu_at_the_reward_token(rewards):
    reward = rewards["hpsv3"]
    images = _images(7, n=2)
    batch = reward.prepare(images, PROMPTS[:2])
    ids = batch["input_ids"]
    assert ((ids == reward.reward_token_id).sum(1) == 1).all()
    text = reward.processor.tokenizer.decode(ids[0])
    assert "Textual prompt - a red cat on a mat" in text and "Please provide the overall ratings of this image: <|Reward|>" in text
    inputs = {k: v for k, v in batch.items() if k != "input_ids"}
    hidden = reward.model.model(input_ids=ids, **inputs).last_hidden_state
    position = (ids == reward.reward_token_id).float().argmax(1)
    expected = reward.model.rm_head(hidden[torch.arange(2), position].float())
    mu_sigma = reward.mu_sigma(images, PROMPTS[:2])
    torch.testing.assert_close(mu_sigma, expected)
    torch.testing.assert_close(reward.score(images, PROMPTS[:2]), expected[:, 0])


def test_hpsv3_prompt_without_reward_token_is_nan_and_counted(rewards):
    from fyp.rewards.hpsv3 import REWARD_TOKEN
    reward = rewards["hpsv3"]
    before = reward.failures
    scores = reward.score(_images(n=2), [f"two {REWARD_TOKEN} tokens", "fine"])
    assert torch.isnan(scores[0]) and torch.isfinite(scores[1]) and reward.failures == before + 1


def test_hpsv3_legacy_checkpoint_keys_load(rewards):
    """HPSv3.safetensors uses transformers-4.45 names (visual.*, model.layers.*); they map onto this model."""
    from fyp.rewards.hpsv3 import remap_legacy_keys
    model = rewards["hpsv3"].model
    current = model.state_dict()
    legacy = {}
    for k, v in current.items():
        k = k.replace("model.visual.", "visual.").replace("model.language_model.", "model.")
        legacy[k] = v
    assert "visual.patch_embed.proj.weight" in legacy and "model.embed_tokens.weight" in legacy
    assert "rm_head.0.weight" in legacy and "rm_head.5.weight" in legacy and "lm_head.weight" in legacy
    assert remap_legacy_keys(legacy).keys() == current.keys()


def test_full_size_architectures_have_the_published_parameter_counts():
    """The benchmark's in-code 7B / XXL configs, built on the meta device (no memory, no download)."""
    from fyp.rewards.hpsv3 import REWARD_TOKEN, HPSv3Model
    from fyp.rewards.vlm_common import model_class, qwen_vl_7b_config, tiny_qwen_tokenizer
    from fyp.rewards.vqascore import full_clip_flant5_xxl
    tok = tiny_qwen_tokenizer((REWARD_TOKEN,))
    with torch.device("meta"):
        qwen25 = model_class("qwen2_5_vl")(qwen_vl_7b_config("qwen2_5_vl", tok))
        hps = HPSv3Model(qwen_vl_7b_config("qwen2_vl", tok))
        vqa = full_clip_flant5_xxl()

    def billions(module):
        return sum(p.numel() for p in module.parameters()) / 1e9
    assert billions(qwen25) == pytest.approx(8.292, abs=0.002)  # Qwen2.5-VL-7B-Instruct
    assert billions(hps) == pytest.approx(8.291 + 3584 * 1024 / 1e9 + 1024 * 16 / 1e9, abs=0.003)  # Qwen2-VL-7B + head
    assert [tuple(hps.rm_head[i].weight.shape) for i in (0, 3, 5)] == [(1024, 3584), (16, 1024), (2, 16)]
    t5 = sum(p.numel() for k, p in vqa.named_parameters() if not k.startswith(("vision_tower", "mm_projector")))
    assert t5 / 1e9 == pytest.approx(11.135, abs=0.001)  # google/flan-t5-xxl
    assert billions(vqa.vision_tower) == pytest.approx(0.3035, abs=0.0005)  # CLIP ViT-L/14-336 vision tower
