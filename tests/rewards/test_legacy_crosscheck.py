"""Cross-check of the native ImageReward and HPSv2 heads against the canonical packages (`image-reward` 1.5,
`hpsv2` 1.2.0), each in its own virtual environment built by scripts/legacy_rewards.sh (run here by a fixture;
idempotent, ~35 s the first time, ~1 s once cached in .venv-legacy/).

The native model's random weights are saved (safetensors), loaded into the package's own modules in a
subprocess under the legacy interpreter, and both must give the same scores:
- ImageReward: the package's VisionTransformer, BertModel (med.py) and MLP, scored by its own
  `ImageReward.score_gard` on the same pixels and token ids; |difference| <= 1e-5 (float32).
- HPSv2: the package's vendored open_clip model, its tokenizer and its eval transform on PIL images, scored as
  `hpsv2.img_score` does (diagonal of normalised image @ text features, times 100 per SPEC);
  |difference| <= 1e-3 on the 100x scale (1e-5 in cosine).
Each side also builds the full-size architecture on the meta device: parameter names and shapes must match, so
the published checkpoints (ImageReward.pt, HPS_v2.1_compressed.pt) load into the native models.
The packages' __init__ modules import training/download dependencies (datasets, diffusers, clint) that the
scorers do not use; the subprocess imports the scorer modules directly.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fyp.rewards import build
from fyp.rewards.imagereward import IGNORED_KEYS, TINY, ImageRewardConfig, ImageRewardModel

ROOT = Path(__file__).resolve().parents[2]
LEGACY = ROOT / ".venv-legacy"

pytestmark = pytest.mark.timeout(600)

BYPASS_INIT = """
import sys, types, os, sysconfig
def bypass_init(package):
    site = sysconfig.get_paths()["purelib"]
    parts = package.split(".")
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        module = types.ModuleType(name)
        module.__path__ = [os.path.join(site, *parts[:i])]
        sys.modules[name] = module
"""

IMAGEREWARD_SIDE = BYPASS_INIT + r"""
import json, re, inspect, sys
import torch
from torch import nn
from safetensors.torch import load_file
bypass_init("ImageReward")
from ImageReward.ImageReward import ImageReward, MLP
from ImageReward.models.BLIP.med import BertConfig, BertModel
from ImageReward.models.BLIP.vit import VisionTransformer

work = sys.argv[1]
args = json.load(open(work + "/args.json"))

def package_model(vit, med_path):
    blip = nn.Module()
    blip.visual_encoder = VisionTransformer(**vit)
    config = BertConfig.from_json_file(med_path)
    config.encoder_width = vit["embed_dim"]
    blip.text_encoder = BertModel(config=config, add_pooling_layer=False)
    model = ImageReward.__new__(ImageReward)   # its __init__ downloads bert-base-uncased; build the same parts
    nn.Module.__init__(model)
    model.device = "cpu"
    model.blip = blip
    model.mlp = MLP(config.hidden_size)
    source = inspect.getsource(ImageReward.__init__)   # the package's own normalisation constants
    model.mean = float(re.search(r"self\.mean = ([0-9.]+)", source).group(1))
    model.std = float(re.search(r"self\.std = ([0-9.]+)", source).group(1))
    return model

model = package_model(args["vit"], work + "/med_tiny.json")
missing, unexpected = model.load_state_dict(load_file(work + "/weights.safetensors"), strict=False)
inputs = load_file(work + "/inputs.safetensors")
model.eval()
with torch.no_grad():
    scores = model.score_gard(inputs["input_ids"], inputs["attention_mask"], inputs["pixels"]).squeeze(-1)
linspace = torch.linspace   # BLIP's ViT calls .item() on a linspace: keep that one on the CPU
torch.linspace = lambda *a, **k: linspace(*a, **{**k, "device": "cpu"})
with torch.device("meta"):
    full = package_model(args["vit_full"], work + "/med_full.json")
torch.linspace = linspace
shapes = {k: list(v.shape) for k, v in full.state_dict().items()}
json.dump(dict(scores=scores.tolist(), missing=missing, unexpected=unexpected, full_shapes=shapes,
               mean=model.mean, std=model.std), open(work + "/out.json", "w"))
"""

HPSV2_SIDE = BYPASS_INIT + r"""
import json, sys
import numpy as np, torch
from PIL import Image
from safetensors.torch import load_file
bypass_init("hpsv2.src")
import hpsv2.src.open_clip as open_clip
from hpsv2.src.open_clip.transform import image_transform

work = sys.argv[1]
args = json.load(open(work + "/args.json"))
open_clip.add_model_config(work + "/model_configs")
model = open_clip.create_model(args["arch"], precision="fp32", device="cpu", output_dict=True)
missing, unexpected = model.load_state_dict(load_file(work + "/weights.safetensors"), strict=False)
model.eval()
preprocess_val = image_transform(args["image_size"], is_train=False)
tokenizer = open_clip.get_tokenizer("ViT-H-14")
images = np.load(work + "/images.npy")
scores = []
with torch.no_grad():
    for array, prompt in zip(images, args["prompts"]):      # hpsv2.img_score.score, one image at a time
        image = preprocess_val(Image.fromarray(array)).unsqueeze(0)
        out = model(image, tokenizer([prompt]))
        scores.append(float(torch.diagonal(out["image_features"] @ out["text_features"].T)[0]))
with torch.device("meta"):
    full = open_clip.create_model("ViT-H-14", precision="fp32", device="meta")
shapes = {k: list(v.shape) for k, v in full.state_dict().items()}
json.dump(dict(scores=scores, missing=missing, unexpected=unexpected, full_shapes=shapes),
          open(work + "/out.json", "w"))
"""


@pytest.fixture(scope="module")
def legacy_envs() -> Path:
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "legacy_rewards.sh")], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail("scripts/legacy_rewards.sh failed (needs the PyPI registry the first time):\n"
                    + proc.stderr[-2000:])
    return LEGACY


def run_legacy(env: Path, script: str, work: Path) -> dict:
    (work / "side.py").write_text(script)
    proc = subprocess.run([str(env / "bin" / "python"), str(work / "side.py"), str(work)], capture_output=True,
                          text=True, cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((work / "out.json").read_text())


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)  # at model resolution: no resize on either side


PROMPTS = ["a red car", "a photo of a cat", "a red car on the road", "green trees by the water"]


def test_imagereward_matches_the_image_reward_package(legacy_envs, images, tmp_path):
    native = build("imagereward", tiny=True, device="cpu", seed=7)
    model = native.model
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():  # the package's MLP init (std 1/(width+1)) makes nearly constant scores: widen it
        for layer in model.mlp.layers:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) / layer.in_features ** 0.5)
                layer.bias.copy_(torch.randn(layer.bias.shape, generator=g) * 0.1)
    pixels = native.transform(torch.from_numpy(images), torch.device("cpu"), torch.float32)
    ids, mask = native.tokenize(PROMPTS)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "weights.safetensors")
    save_file(dict(pixels=pixels.contiguous(), input_ids=ids, attention_mask=mask), tmp_path / "inputs.safetensors")
    cfg = model.cfg
    (tmp_path / "med_tiny.json").write_text(json.dumps(cfg.med_config()))
    (tmp_path / "med_full.json").write_text(json.dumps(ImageRewardConfig().med_config()))
    vit = dict(img_size=cfg.image_size, patch_size=cfg.patch_size, embed_dim=cfg.vision_width,
               depth=cfg.vision_layers, num_heads=cfg.vision_heads)
    vit_full = dict(img_size=224, patch_size=16, embed_dim=1024, depth=24, num_heads=16)  # blip create_vit('large')
    (tmp_path / "args.json").write_text(json.dumps(dict(vit=vit, vit_full=vit_full)))

    out = run_legacy(legacy_envs / "imagereward", IMAGEREWARD_SIDE, tmp_path)

    # Every package parameter came from our file; only its unused position_ids buffer is not in it.
    assert out["unexpected"] == []
    assert all(k.endswith("embeddings.position_ids") for k in out["missing"]), out["missing"]
    ours = native.score(torch.from_numpy(images), PROMPTS)
    theirs = torch.tensor(out["scores"], dtype=torch.float32)
    assert ours.std() > 1e-2  # the check means something: scores differ between images
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert (out["mean"], out["std"]) == (0.16717362830052426, 1.0333394966054072)

    with torch.device("meta"):
        full = ImageRewardModel(ImageRewardConfig())
    native_shapes = {k: list(v.shape) for k, v in full.state_dict().items()}
    package_shapes = {k: v for k, v in out["full_shapes"].items() if not k.startswith(IGNORED_KEYS)}
    assert native_shapes == package_shapes
    assert TINY.vision_width == cfg.vision_width


def test_hpsv2_matches_the_hpsv2_package(legacy_envs, images, tmp_path):
    from fyp.rewards.hpsv2 import TINY_ARCH, TINY_CONFIG

    native = build("hpsv2", tiny=True, device="cpu", seed=7)
    state = {k: v.contiguous() for k, v in native.model.state_dict().items()}
    save_file(state, tmp_path / "weights.safetensors")
    np.save(tmp_path / "images.npy", images)
    (tmp_path / "model_configs").mkdir()
    (tmp_path / "model_configs" / f"{TINY_ARCH}.json").write_text(json.dumps(TINY_CONFIG))
    (tmp_path / "args.json").write_text(json.dumps(dict(arch=TINY_ARCH, image_size=32, prompts=PROMPTS)))

    out = run_legacy(legacy_envs / "hpsv2", HPSV2_SIDE, tmp_path)

    assert out["missing"] == [] and out["unexpected"] == []
    ours = native.score(torch.from_numpy(images), PROMPTS)
    theirs = 100.0 * torch.tensor(out["scores"], dtype=torch.float32)
    assert ours.std() > 1e-2
    torch.testing.assert_close(ours, theirs, atol=1e-3, rtol=0)

    import open_clip

    with torch.device("meta"):
        full = open_clip.model.CLIP(**open_clip.get_model_config("ViT-H-14"))
    native_shapes = {k: list(v.shape) for k, v in full.state_dict().items()}
    assert native_shapes == out["full_shapes"]


def test_legacy_script_is_idempotent(legacy_envs):
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "legacy_rewards.sh")], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.count("up to date") == 2, proc.stdout + proc.stderr
    assert sys.executable  # the test ran under the shared venv; the legacy sides ran under their own
