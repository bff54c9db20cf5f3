"""The VLM judge: rubric parsing, weight variants, the HTTP backend against a local server, a tiny local Qwen3-VL."""
from __future__ import annotations

import json
import logging
import math
import re

import numpy as np
import pytest
import torch
from fixtures_vlm_http import ScriptedChatServer, request_images, request_text

from fyp.rewards.judge import (WEIGHT_VARIANTS, build_judge, parse_bias, parse_judgement, resolve_weights)

SECRET = "sk-judge-secret-0000"


def _nan(x: float) -> bool:
    return isinstance(x, float) and math.isnan(x)


# ------------------------------------------------------------------------------------------------------ parsing
@pytest.mark.parametrize("text,expected", [
    ('{"aesthetic": 32, "structural": 24, "semantic": 27, "reason": "ok"}', (32, 24, 27, 83)),
    ('```json\n{"aesthetic": 30, "structural": 30, "semantic": 30}\n```', (30, 30, 30, 90)),
    ('Here is my verdict:\n{"Aesthetic quality": "35", "Structural coherence": "20/30", "Semantic alignment": '
     '"10 points"}\nHope this helps {not json}', (35, 20, 10, 65)),
    ("{'aesthetic': 20, 'structural': 15, 'semantic': 15,}", (20, 15, 15, 50)),  # single quotes, trailing comma
    ('{"aesthetic": {"score": 40}, "structural": 0, "semantic": 0.5}', (40, 0, 0.5, 40.5)),
    ('{"reason": "the {brace} in a string", "aesthetic": 10, "structural": 10, "semantic": 10}', (10, 10, 10, 30)),
    ("Aesthetic quality: 36\nStructural coherence: 27\nSemantic alignment: 21", (36, 27, 21, 84)),  # no JSON
])
def test_parse_judgement_variants(text, expected):
    r = parse_judgement(text)
    assert (r.aesthetic, r.structural, r.semantic) == expected[:3]
    assert r.total == pytest.approx(expected[3]) and r.valid and r.raw == text


def test_out_of_range_is_clamped_or_invalid():
    text = '{"aesthetic": 55, "structural": -3, "semantic": 30}'
    clamped = parse_judgement(text)
    assert (clamped.aesthetic, clamped.structural, clamped.semantic, clamped.total) == (40, 0, 30, 70)
    strict = parse_judgement(text, out_of_range="invalid")
    assert _nan(strict.aesthetic) and _nan(strict.structural) and strict.semantic == 30 and not strict.valid
    with pytest.raises(ValueError, match="out_of_range"):
        parse_judgement(text, out_of_range="ignore")


@pytest.mark.parametrize("text", [
    None, "", "I like it.", '{"aesthetic": 30, "structural": 20}', '{"aesthetic": "high", "structural": 1, '
    '"semantic": 1}', '{"aesthetic": true, "structural": 1, "semantic": 1}', '{"aesthetic": NaN, "structural": 1, '
    '"semantic": 1}',
])
def test_unusable_answers_have_a_nan_total(text):
    r = parse_judgement(text)
    assert _nan(r.total) and not r.valid


@pytest.mark.parametrize("name,weights", list(WEIGHT_VARIANTS.items()))
def test_weight_variants_put_totals_on_0_100(name, weights):
    assert resolve_weights(name) == weights
    full = json.dumps(dict(zip(("aesthetic", "structural", "semantic"), weights)))
    assert parse_judgement(full, weights).total == pytest.approx(100.0)
    half = json.dumps(dict(zip(("aesthetic", "structural", "semantic"), [w / 2 for w in weights])))
    assert parse_judgement(half, weights).total == pytest.approx(50.0)
    # a 35 in the first category clamps to that variant's maximum
    r = parse_judgement('{"aesthetic": 35, "structural": 0, "semantic": 0}', weights)
    assert r.aesthetic == min(35, weights[0])


def test_bad_weights_are_clear_errors():
    with pytest.raises(ValueError, match="40-30-30"):
        resolve_weights("50-25-25")
    with pytest.raises(ValueError, match="3 positive"):
        resolve_weights((40, 60))
    assert resolve_weights([20, 40, 40]) == (20, 40, 40)


def test_parse_bias_ratings():
    r = parse_bias('```\n{"brightness": 7, "composition": "4", "color": 12}\n```')
    assert (r.brightness, r.composition, r.colour) == (7, 4, 10) and r.valid  # "color" accepted, 12 clamped
    assert not parse_bias('{"brightness": 7}').valid
    assert _nan(parse_bias("Brightness: 0", out_of_range="invalid").brightness)


# --------------------------------------------------------------------------------------------------- HTTP judge
def _case(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    originals = torch.randint(0, 256, (n, 32, 48, 3), dtype=torch.uint8, generator=g)
    results = torch.randint(0, 256, (n, 32, 48, 3), dtype=torch.uint8, generator=g)
    masks = torch.zeros(n, 32, 48)
    masks[:, 8:24, 10:30] = 1
    return originals, masks, results


def _judge_answer(body: dict) -> str:
    text = request_text(body)
    if text.startswith("Rate this image"):
        return '{"brightness": 8, "composition": 3, "colour": 6}'
    prompt = re.search(r'regenerated region is: "(.*?)"', text).group(1)
    maxima = [int(m) for m in re.findall(r"\(0-(\d+) points\)", text)]
    if prompt == "garbage":
        return "Sorry, I can't help with that."
    if prompt == "fenced":
        return f'```json\n{{"aesthetic": "{maxima[0]}", "structural": {maxima[1]}, "semantic": 1}}\n```\nDone.'
    return json.dumps({"aesthetic": maxima[0] - 1, "structural": maxima[1] - 2, "semantic": maxima[2] - 3,
                       "reason": "fine"})


def test_http_judge_sends_three_images_and_the_rubric(monkeypatch, caplog):
    monkeypatch.setenv("FYP_JUDGE_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    originals, masks, results = _case(3)
    with ScriptedChatServer(_judge_answer, failures=[(429, {}), (500, {})]) as server:
        judge = build_judge(backend="http", base_url=server.base_url, model="gpt-4o", api_key_env="FYP_JUDGE_KEY",
                            backoff_s=0.01, concurrency=2)
        out = judge.judge_batch(originals, masks, ["a red car", "fenced", "garbage"], results)
        single = judge.judge(originals[0], masks[0], "a red car", results[0])
    assert (out[0].aesthetic, out[0].structural, out[0].semantic) == (39, 28, 27)
    assert out[0].total == pytest.approx(94.0) and single == out[0]
    assert (out[1].aesthetic, out[1].structural, out[1].semantic, out[1].total) == (40, 30, 1, 71)
    assert not out[2].valid and _nan(out[2].total) and out[2].raw.startswith("Sorry")
    assert judge.failures == 1
    assert len(server.requests) == 2 + 3 + 1  # two scripted failures retried
    assert SECRET not in caplog.text and "HTTP 429" in caplog.text
    body = next(r["body"] for r in server.requests if 'is: "a red car"' in request_text(r["body"]))
    text = request_text(body)
    for phrase in ("Aesthetic quality (0-40 points)", "Structural coherence (0-30 points)",
                   "Semantic alignment (0-30 points)", "colour harmony", "seamless boundary", "JSON"):
        assert phrase in text
    original_png, mask_png, result_png = request_images(body)
    assert np.array_equal(np.asarray(original_png), originals[0].numpy())
    assert np.array_equal(np.asarray(result_png), results[0].numpy())
    mask_array = np.asarray(mask_png)
    assert mask_array[16, 20].tolist() == [255, 255, 255] and mask_array[0, 0].tolist() == [0, 0, 0]  # hole white


def test_http_judge_weight_variant_changes_the_rubric_and_total():
    originals, masks, results = _case(1)
    with ScriptedChatServer(_judge_answer) as server:
        judge = build_judge(backend="http", base_url=server.base_url, model="m", api_key_env=None,
                            weights="30-30-40")
        r = judge.judge(originals[0], masks[0], "a cat", results[0])
    assert "Semantic alignment (0-40 points)" in request_text(server.requests[0]["body"])
    assert (r.aesthetic, r.structural, r.semantic) == (29, 28, 37) and r.total == pytest.approx(94.0)


def test_http_judge_bias_ratings():
    _, _, results = _case(2)
    with ScriptedChatServer(_judge_answer) as server:
        judge = build_judge(backend="http", base_url=server.base_url, model="m", api_key_env=None)
        ratings = judge.rate_bias(results)
    assert [(r.brightness, r.composition, r.colour) for r in ratings] == [(8, 3, 6)] * 2
    assert len(request_images(server.requests[0]["body"])) == 1


def test_judge_input_errors():
    judge = build_judge(backend="http", base_url="http://127.0.0.1:9/v1", model="m", api_key_env=None)
    originals, masks, results = _case(2)
    with pytest.raises(ValueError, match="must match"):
        judge.judge_batch(originals, masks, ["one prompt"], results)
    with pytest.raises(ValueError, match="uint8"):
        judge.judge(originals[0].float(), masks[0], "x", results[0])
    with pytest.raises(ValueError, match="base_url"):
        build_judge(backend="http")
    with pytest.raises(ValueError, match="unknown backend"):
        build_judge(backend="grpc")


# -------------------------------------------------------------------------------------------- local tiny Qwen3-VL
@pytest.fixture(scope="module")
def tiny_judge():
    return build_judge(tiny=True, device="cpu")


def test_tiny_local_judge_is_qwen3_vl_and_counts_unparseable_answers(tiny_judge):
    assert type(tiny_judge.model).__name__ == "Qwen3VLForConditionalGeneration"
    originals, masks, results = _case(2, seed=1)
    before = tiny_judge.failures
    out = tiny_judge.judge_batch(originals, masks, ["a cat", "a red bus"], results)
    assert all(isinstance(r.raw, str) and r.raw for r in out)
    assert all(_nan(r.total) for r in out)  # random weights never write the rubric JSON
    assert tiny_judge.failures == before + 2


def test_tiny_local_judge_greedy_answers_do_not_depend_on_the_batch(tiny_judge):
    originals, masks, results = _case(3, seed=2)
    prompts = ["a cat", "a much longer prompt about a red bus", "x"]
    together = [r.raw for r in tiny_judge.judge_batch(originals, masks, prompts, results)]
    alone = [tiny_judge.judge(originals[i], masks[i], prompts[i], results[i]).raw for i in range(3)]
    assert together == alone and all(isinstance(t, str) and t for t in together)


# The official evaluation asks GPT-4 for "a sub-score and a 1-2-sentence justification" per criterion and a total,
# under the headings Aesthetic Quality, Structural Accuracy, Semantic Alignment and Overall Score. Hand-written
# answers in the shapes GPT-4 gives them (markdown headings, the rubric's range echoed, score on the next line).
OFFICIAL_ANSWERS = [
    ("**Aesthetic Quality (0\u201340 points): 34**\nThe colours of the new region harmonise with the scene; the "
     "texture is slightly smoother than the rest.\n\n**Structural Accuracy (0\u201330 points): 25**\nThe fence "
     "continues across the mask boundary, with a faint seam at the top edge.\n\n**Semantic Alignment (0\u201330 "
     "points): 28**\nA red bicycle leans on the fence as the prompt asks.\n\n**Overall Score: 87/100**",
     (34, 25, 28)),
    ("1. Aesthetic Quality: 31/40\n   - Pleasant colours, but 2 small artefacts near the wheel.\n"
     "2. Structural Accuracy: 22/30\n   - The horizon bends at the mask edge.\n"
     "3. Semantic Alignment: 30/30\n   - Exactly what the prompt describes.\n\nOverall Score: 83/100", (31, 22, 30)),
    ("### Aesthetic Quality (36/40)\nRich, coherent colours.\n### Structural Accuracy (27/30)\nSeamless.\n"
     "### Semantic Alignment (18/30)\nThe dog is there but 3 cats were asked for.\n### Overall Score: 81", (36, 27, 18)),
    ("Aesthetic Quality\nScore: 20\nJustification: flat lighting, 4 visible seams.\n\nStructural Accuracy\n"
     "Score: 15.5\nJustification: the table leg is broken.\n\nSemantic Alignment\nScore: 10\nJustification: the vase "
     "is missing.\n\nOverall Score: 45.5", (20, 15.5, 10)),
    ('{"Aesthetic Quality": {"score": 33, "justification": "balanced"}, "Structural Accuracy": {"score": 24, '
     '"justification": "one seam"}, "Semantic Alignment": {"score": 29, "justification": "faithful"}, '
     '"Overall Score": 86}', (33, 24, 29)),
    ("I evaluated Aesthetic Quality, Structural Accuracy and Semantic Alignment.\n\n- **Aesthetic Quality**: 38 "
     "points. Beautiful.\n- **Structural Accuracy**: 29 points. Clean edges.\n- **Semantic Alignment**: 12 points. "
     "Wrong object.\n\n**Total Score: 79/100**", (38, 29, 12)),
]


@pytest.mark.parametrize("text,subs", OFFICIAL_ANSWERS)
def test_parse_judgement_reads_the_official_gpt4_format(text, subs):
    r = parse_judgement(text)
    assert (r.aesthetic, r.structural, r.semantic) == subs
    assert r.valid and r.total == pytest.approx(sum(subs))  # 40-30-30: the total is the sum of the sub-scores


def test_official_format_without_a_score_is_still_nan():
    # headings with justifications but no numbers: a number inside a justification is not a sub-score
    text = ("**Aesthetic Quality**: The image shows 3 birds in warm light.\n**Structural Accuracy**: The 2 "
            "branches join well.\n**Semantic Alignment**: Faithful.\nOverall Score: 90/100")
    r = parse_judgement(text)
    assert _nan(r.aesthetic) and _nan(r.structural) and _nan(r.semantic) and not r.valid
