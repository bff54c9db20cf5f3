"""The BrushNet inpainting pipeline (SD1.5 U-Net + BrushNet branch): builder and helpers for the sampler,
the trainer and the evaluator, with the same names and conventions as fyp.models.flux_fill.

`build_pipeline(cfg.model)` returns a `BrushNetPipe` (a plain container of diffusers / transformers parts):
- `tiny=False`: `UNet2DConditionModel`, `AutoencoderKL`, `CLIPTextModel`, `CLIPTokenizer` and the scheduler
  config from `model.pretrained` (an SD1.5 checkpoint: hub id or local folder, diffusers layout), and
  `BrushNetModel.from_pretrained(model.brushnet)` (the published branch, e.g. a local copy of TencentARC's
  `segmentation_mask_brushnet_ckpt`); without `model.brushnet` the branch is initialised from the U-Net;
- `tiny=True`: the same classes from tiny configs with weights drawn from `model.seed`.

Conventions (as the official BrushNet pipeline, except where said):
- images uint8 [B,H,W,3]; masks [B,H,W] with 1 = hole (the suite's convention) at this module's edge;
- latents are `vae mean * scaling_factor` [B,4,h,w] (the posterior mean, not a sample, as for FLUX: the
  condition depends on the image and mask only and is computed once per sample);
- the condition is `cat(latents of the masked image, keep mask)` [B,5,h,w]: the masked image has its hole
  pixels set to black before normalisation (the official examples' `init_image * (1 - mask)`), and the
  keep mask (1 = keep) is nearest-downsampled to the latent size (`keep_mask_channel`);
- sampling: UniPC multistep (the official examples' scheduler) from SD1.5's scheduler config, classifier-free
  guidance (default 7.5) against the empty prompt, the branch at conditioning scale 1.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..config import ConfigError, ModelConfig
from ..devices import resolve_device, resolve_dtype
from .batch_invariant import batch_invariant as _batch_invariant
from .brushnet import BrushNetModel, brushnet_from_unet, check_unet, keep_mask_channel, predict_noise

SD_LATENT_CHANNELS = 4
SD_VAE_SCALE = 8
SD_SCALING_FACTOR = 0.18215
CLIP_MAX_LENGTH = 77
TINY_VAE_SCALE = 4
TINY_TEXT_WIDTH = 32

# SD1.5's scheduler config (scheduler/scheduler_config.json of runwayml/stable-diffusion-v1-5): the DDPM
# training schedule and the base of the sampler's UniPC.
SD15_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      trained_betas=None, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                      prediction_type="epsilon")


class ModelError(RuntimeError):
    """A model could not be built or loaded; the message says what to do."""


@dataclass
class BrushNetPipe:
    vae: object
    text_encoder: object
    tokenizer: object
    unet: object
    brushnet: object | None
    scheduler: object
    scheduler_config: dict

    def __post_init__(self):
        from diffusers.image_processor import VaeImageProcessor

        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.latent_channels = self.vae.config.latent_channels
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self._negative = None

    # the names the suite's stages use for "the denoiser" of a pipeline
    @property
    def transformer(self):
        return self.brushnet

    @transformer.setter
    def transformer(self, module):  # eval and the toy swap in a trained branch under this name
        self.brushnet = module

    @property
    def device(self) -> torch.device:
        return self.vae.device

    def set_progress_bar_config(self, **_):
        pass


def latent_shape(model_cfg: ModelConfig, resolution: int) -> tuple[int, int, int]:
    scale = TINY_VAE_SCALE if model_cfg.tiny else SD_VAE_SCALE
    # The U-Net halves the latent 3 times (SD1.5); the tiny one twice. Keep to multiples of 8 latents.
    if resolution % (8 * scale):
        raise ConfigError(f"resolution {resolution} must be a multiple of {8 * scale} for BrushNet")
    return SD_LATENT_CHANNELS, resolution // scale, resolution // scale


def tiny_unet_config() -> dict:
    """SD1.5's U-Net layout in miniature: cross-attention down/up blocks and a plain one, 2 layers each."""
    return dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=2,
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                block_out_channels=(8, 16, 16), norm_num_groups=4, cross_attention_dim=TINY_TEXT_WIDTH,
                attention_head_dim=4)


def build_tiny_components(seed: int = 0) -> dict:
    """The parts with tiny configs and weights from `seed`; the branch starts from the U-Net as in the paper,
    with its zero convolutions then given small random weights (an untrained zero branch would make the
    branch invisible, and the tiny model should depend on its condition)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .flux_fill import _tiny_clip_tokenizer

    tokenizer = _tiny_clip_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(int(seed))
        unet = UNet2DConditionModel(**tiny_unet_config())
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 16, 16), layers_per_block=1,
            latent_channels=SD_LATENT_CHANNELS, norm_num_groups=4, sample_size=64, scaling_factor=SD_SCALING_FACTOR,
        )
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=TINY_TEXT_WIDTH, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=CLIP_MAX_LENGTH, projection_dim=TINY_TEXT_WIDTH,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ))
        brushnet = brushnet_from_unet(unet)
        with torch.no_grad():
            for name, param in brushnet.named_parameters():
                if name.startswith("brushnet_"):
                    param.normal_(0.0, 0.05)
    for module in (unet, vae, text_encoder, brushnet):
        module.eval()
    return dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, brushnet=brushnet)


def _scheduler(config: dict):
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler.from_config(config)


def load_brushnet(path: str, dtype=None) -> BrushNetModel:
    try:
        return BrushNetModel.from_pretrained(path, torch_dtype=dtype).eval()
    except (OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"cannot load BrushNet weights from {path!r} ({first}); give model.brushnet a folder with "
                         f"config.json + diffusion_pytorch_model.safetensors (the official layout)") from exc


def build_pipeline(model: ModelConfig, *, device=None, max_sequence_length: int | None = None,
                   with_transformer: bool = True) -> BrushNetPipe:
    """The BrushNet pipeline of `model`, on `device`, in `model.dtype`, in eval mode.

    `with_transformer=False`: no branch (`pipe.brushnet` None), for encoding or a caller that sets its own.
    `max_sequence_length` is accepted for the FLUX signature; CLIP's length is 77.
    """
    dtype = resolve_dtype(model.dtype)
    target = resolve_device(model.device if device is None else device)
    if model.tiny:
        parts = build_tiny_components(model.seed)
        config = dict(SD15_SCHEDULER)
    else:
        parts, config = _load_pretrained(model, dtype, with_transformer)
    if not with_transformer:
        parts["brushnet"] = None
    check_unet(parts["unet"])
    pipe = BrushNetPipe(scheduler=_scheduler(config), scheduler_config=config, **parts)
    for name in ("unet", "vae", "text_encoder", "brushnet"):
        module = getattr(pipe, name)
        if module is not None:  # the dtype only when it changes (diffusers warns on every cast call)
            module.to(device=target) if module.dtype == dtype else module.to(device=target, dtype=dtype)
            module.eval()
    return pipe


def _load_pretrained(model: ModelConfig, dtype, with_branch: bool) -> tuple[dict, dict]:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    where = model.pretrained
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            unet = UNet2DConditionModel.from_pretrained(where, subfolder="unet", torch_dtype=dtype)
            vae = AutoencoderKL.from_pretrained(where, subfolder="vae", torch_dtype=dtype)
            text_encoder = CLIPTextModel.from_pretrained(where, subfolder="text_encoder", torch_dtype=dtype)
            tokenizer = CLIPTokenizer.from_pretrained(where, subfolder="tokenizer")
            config = dict(DDPMScheduler.load_config(where, subfolder="scheduler"))
    except (OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"cannot load the SD1.5 parts from {where!r} ({first}); give model.pretrained a local "
                         f"folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/) or pre-download it into "
                         f"HF_HOME and set HF_HUB_OFFLINE=1") from exc
    brushnet = None
    if with_branch:
        brushnet = load_brushnet(model.brushnet, dtype) if model.brushnet else brushnet_from_unet(unet)
    return dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, brushnet=brushnet), config


def _exec(pipe) -> tuple[torch.device, torch.dtype]:
    return pipe.unet.device, pipe.unet.dtype


# -- prompts -----------------------------------------------------------------------------------
@dataclass
class PromptEmbeds:
    """CLIP text conditioning of B prompts: the last hidden states [B,77,D] (what the U-Net attends to) and
    the pooled output [B,D] (unused by SD1.5; kept so the training cache has FLUX's fields)."""

    prompt_embeds: torch.Tensor
    pooled: torch.Tensor

    def repeat(self, n: int) -> "PromptEmbeds":
        return PromptEmbeds(self.prompt_embeds.expand(n, -1, -1).contiguous(), self.pooled.expand(n, -1).contiguous())


@torch.no_grad()
def encode_prompt(pipe, prompt, max_sequence_length: int | None = None) -> PromptEmbeds:
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    device, dtype = _exec(pipe)
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=CLIP_MAX_LENGTH, truncation=True,
                         return_tensors="pt").input_ids.to(device)
    out = pipe.text_encoder(ids)
    return PromptEmbeds(out.last_hidden_state.to(dtype), out.pooler_output.to(dtype))


def negative_embeds(pipe) -> torch.Tensor:
    """The empty prompt's embeddings [1,77,D] (the unconditional side of guidance), computed once."""
    if pipe._negative is None:
        pipe._negative = encode_prompt(pipe, "").prompt_embeds
    return pipe._negative


# -- latents -----------------------------------------------------------------------------------
def _batched(array, ndim: int) -> np.ndarray:
    array = np.asarray(array)
    return array[None] if array.ndim == ndim - 1 else array


def _pixels(image_uint8) -> torch.Tensor:
    image = torch.from_numpy(_batched(image_uint8, 4)).permute(0, 3, 1, 2).contiguous().float() / 255.0
    return image * 2 - 1


def _vae_latents(pipe, pixels: torch.Tensor) -> torch.Tensor:
    device, dtype = _exec(pipe)
    posterior = pipe.vae.encode(pixels.to(device=device, dtype=pipe.vae.dtype)).latent_dist
    return (posterior.mode() * pipe.vae.config.scaling_factor).to(dtype)


@torch.no_grad()
def encode_image_latents(pipe, image_uint8) -> torch.Tensor:
    """Scaled VAE latents [B,4,h,w] of uint8 images (the x0 of the DDPM loss)."""
    return _vae_latents(pipe, _pixels(image_uint8))


@torch.no_grad()
def encode_condition(pipe, image_uint8, mask) -> torch.Tensor:
    """The branch's condition [B,5,h,w]: latents of the masked image (hole black) and the keep mask."""
    image = _batched(image_uint8, 4)
    hole = torch.from_numpy(_batched(np.asarray(mask, dtype=np.float32), 3))[:, None]
    if hole.shape[0] != image.shape[0] or tuple(hole.shape[2:]) != image.shape[1:3]:
        raise ValueError(f"mask {tuple(hole.shape)} does not match images {image.shape}")
    hole = (hole > 0.5).float()
    pixels = _pixels(image) * (1 - hole) + (-1.0) * hole  # hole pixels black, as image * (1 - mask) in [0, 1]
    latents = _vae_latents(pipe, pixels)
    keep = keep_mask_channel(hole, tuple(latents.shape[2:]))
    return torch.cat([latents, keep.to(device=latents.device, dtype=latents.dtype)], dim=1)


def hole_from_condition(condition: torch.Tensor) -> torch.Tensor:
    """The hole at latent resolution [B,1,h,w] (1 = hole) from a condition's keep channel."""
    return 1.0 - condition[:, -1:]


def initial_noise(pipe, seeds: list[int], height: int, width: int) -> torch.Tensor:
    """Unit Gaussian starting noise [len(seeds),4,h,w], one CPU generator per seed (denoise scales it by the
    scheduler's init sigma)."""
    device, dtype = _exec(pipe)
    s = pipe.vae_scale_factor
    shape = (1, pipe.latent_channels, height // s, width // s)
    noise = [torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(seed)), dtype=torch.float32)
             for seed in seeds]
    return torch.cat(noise).to(device=device, dtype=dtype)


# -- sampling ----------------------------------------------------------------------------------
def _conv_forward(layer: torch.nn.Conv2d):
    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([layer._conv_forward(row[None], layer.weight, layer.bias) for row in x.unbind(0)])
    return forward


@contextlib.contextmanager
def batch_invariant_convs(*modules):
    """On a CPU, every Conv2d of `modules` runs one batch element at a time (oneDNN picks its convolution
    kernel by batch size: measured on the dev box, the tiny U-Net's rows differ between batch 1 and 8);
    on other devices nothing changes (not measured there, as for FLUX's linear layers)."""
    layers = [m for module in modules if module is not None for m in module.modules()
              if isinstance(m, torch.nn.Conv2d) and "forward" not in m.__dict__]
    layers = [m for m in layers if m.weight.device.type == "cpu"]
    for layer in layers:
        layer.forward = _conv_forward(layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


def sampling_timesteps(pipe, steps: int) -> torch.Tensor:
    pipe.scheduler.set_timesteps(steps, device=_exec(pipe)[0])
    return pipe.scheduler.timesteps


@torch.no_grad()
def denoise(pipe, prompt: PromptEmbeds, condition: torch.Tensor, noise: torch.Tensor, *, height: int = 0,
            width: int = 0, steps: int, guidance: float, callback=None, batch_invariant: bool = True) -> torch.Tensor:
    """The official pipeline's loop from given noise; returns the final latents [B,4,h,w].

    Guidance > 1: one forward over [uncond rows, cond rows] (both with the branch's condition, as the
    official pipeline), `uncond + guidance * (cond - uncond)`. With `batch_invariant` every row's result is
    independent of its batch (linear layers as for FLUX, convolutions per element on a CPU).
    """
    batch = noise.shape[0]
    device, dtype = _exec(pipe)
    text = prompt.prompt_embeds.to(device=device, dtype=dtype)
    text = text.expand(batch, -1, -1) if text.shape[0] == 1 else text
    condition = condition.to(device=device, dtype=dtype)
    condition = condition.expand(batch, -1, -1, -1) if condition.shape[0] == 1 else condition
    cfg = guidance > 1.0
    if cfg:
        text = torch.cat([negative_embeds(pipe).to(dtype).expand(batch, -1, -1), text])
        condition = torch.cat([condition, condition])
    latents = noise.to(device=device, dtype=dtype) * pipe.scheduler.init_noise_sigma
    invariant = contextlib.ExitStack()
    if batch_invariant:
        invariant.enter_context(_batch_invariant(pipe.unet))
        invariant.enter_context(_batch_invariant(pipe.brushnet))
        invariant.enter_context(batch_invariant_convs(pipe.unet, pipe.brushnet))
    with invariant:
        for i, t in enumerate(sampling_timesteps(pipe, steps)):
            model_in = torch.cat([latents, latents]) if cfg else latents
            model_in = pipe.scheduler.scale_model_input(model_in, t)
            pred = predict_noise(pipe.unet, pipe.brushnet, model_in, t, text, condition)
            if cfg:
                uncond, cond = pred.chunk(2)
                pred = uncond + guidance * (cond - uncond)
            latents = pipe.scheduler.step(pred, t, latents, return_dict=False)[0]
            if callback is not None:
                callback(i)
    return latents


@torch.no_grad()
def decode_latents(pipe, latents: torch.Tensor, height: int = 0, width: int = 0) -> tuple[np.ndarray, torch.Tensor]:
    """Latents -> (uint8 images [B,H,W,3], the latents); the VAE decodes one image at a time."""
    vae_in = (latents / pipe.vae.config.scaling_factor).to(pipe.vae.dtype)
    pixels = torch.cat([pipe.vae.decode(row[None], return_dict=False)[0] for row in vae_in])
    pixels = (pixels.float() / 2 + 0.5).clamp(0, 1)
    images = (pixels * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return images, latents


def to_tokens(latents: torch.Tensor) -> torch.Tensor:
    """The training cache's layout of latents: BrushNet keeps them [B,C,h,w] (FLUX packs them)."""
    return latents
