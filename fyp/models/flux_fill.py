"""FLUX.1 Fill: one builder for the real pipeline and for a tiny random-weight one, and the helpers that
the sampler, the trainer and the evaluator share.

`build_pipeline(cfg.model)` returns a diffusers `FluxFillPipeline` either way:
- `tiny=False`: `FluxFillPipeline.from_pretrained(model.pretrained)` (hub id or local folder; the hub
  client honours HF_HOME and HF_HUB_OFFLINE by itself);
- `tiny=True`: the same classes built in code from tiny configs with weights drawn from `model.seed`
  (no download), so every later line of code is the same for both.

Conventions of the helpers (all of them work on either pipeline):
- images are uint8 [B,H,W,3] (or [H,W,3]); masks uint8/bool [B,H,W] (or [H,W]) with 1 = hole;
- "latents" are VAE latents in the transformer's space, `(mean - shift_factor) * scaling_factor`,
  unpacked [B,C,h,w] with h = H / s (s = VAE scale factor); "packed" latents are FLUX's 2x2 patch
  tokens [B, (h/2)(w/2), 4C];
- the condition of FLUX Fill is `cat(packed masked-image latents [4C], packed mask [4 s^2])` on the
  channel axis, exactly as `FluxFillPipeline` builds it;
- the VAE encoding of an image uses the posterior mean (no sampling), so a condition is a function of
  the image and mask alone and can be computed once per sample.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..config import ConfigError, ModelConfig
from ..devices import DeviceError, resolve_device, resolve_dtype  # noqa: F401 - re-exported
from .batch_invariant import batch_invariant as _batch_invariant

# The real FLUX.1 VAE: 16 latent channels, 8x down-sampling.
FLUX_LATENT_CHANNELS = 16
FLUX_VAE_SCALE = 8
T5_MAX_LENGTH = 512  # FluxFillPipeline refuses longer T5 sequences

# Tiny configs: 4 latent channels, 4x down-sampling, so transformer in_channels = 4C + 4C + 4 s^2 = 96.
TINY_LATENT_CHANNELS = 4
TINY_VAE_SCALE = 4
TINY_TEXT_WIDTH = 32  # CLIP hidden size (= pooled projection) and T5 d_model (= joint attention dim)



class ModelError(RuntimeError):
    """A model could not be built or loaded; the message says what to do."""


# -- devices and dtypes ------------------------------------------------------------------------
def latent_shape(model_cfg: ModelConfig, resolution: int) -> tuple[int, int, int]:
    """(C, h, w) of the VAE latents of a `resolution` x `resolution` image (what the sampler may save)."""
    if model_cfg.kind != "flux-fill":  # callers that import this module directly (prepare)
        from .family import latent_shape as family_latent_shape

        return family_latent_shape(model_cfg, resolution)
    channels, scale = (TINY_LATENT_CHANNELS, TINY_VAE_SCALE) if model_cfg.tiny else (FLUX_LATENT_CHANNELS, FLUX_VAE_SCALE)
    if resolution % (2 * scale):
        raise ConfigError(f"resolution {resolution} must be a multiple of {2 * scale} for this model")
    return channels, resolution // scale, resolution // scale


# -- tiny components ---------------------------------------------------------------------------
def _byte_symbols() -> list[str]:
    """GPT-2 / CLIP's byte -> printable unicode table (the alphabet of byte-level BPE)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1)) \
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    extra = [b for b in range(256) if b not in printable]
    codes = printable + [256 + i for i in range(len(extra))]
    return [chr(c) for c in codes]


# Whole-word tokens of the tiny tokenizers, so that a prompt of the procedural data set is about one
# token per word (as with the real vocabularies) and fits the tiny preset's short T5 length; any other
# text still encodes, character by character.
TINY_WORDS = (
    "a an and the of on in with to at by is are its this that small large big little tiny huge "
    "red green blue yellow orange purple pink cyan brown white black gray grey gold silver "
    "circle square triangle diamond rectangle ellipse star shape shapes object background "
    "horizontal vertical diagonal gradient left right top bottom center middle corner "
    "photo image picture painting of dog cat person man woman car tree house sky sea "
    "grass road water flower bird table chair window door light dark bright"
).split()


def _tiny_clip_tokenizer():
    """A byte-level BPE CLIP tokenizer: every byte, plus merges that spell the words of TINY_WORDS."""
    from transformers import CLIPTokenizer

    symbols = _byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": len(symbols) + i for i, s in enumerate(symbols)})
    merges = []
    for word in dict.fromkeys(TINY_WORDS):
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        left = parts[0]
        for right in parts[1:]:  # left-to-right chain: w+o, wo+r, wor+d</w>
            if (left, right) not in merges:
                merges.append((left, right))
            left += right
            vocab.setdefault(left, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def _tiny_t5_tokenizer(max_length: int):
    """A unigram T5 tokenizer: the words of TINY_WORDS and every printable ASCII character."""
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -3.0)]
    pieces += [(chr(c), -4.0) for c in range(33, 127)]
    pieces += [("\u2581" + word, -1.0) for word in dict.fromkeys(TINY_WORDS)]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=max_length)


def build_tiny_components(seed: int = 0, max_sequence_length: int = T5_MAX_LENGTH) -> dict:
    """The seven FluxFillPipeline components with tiny configs and weights drawn from `seed`.

    The global RNG is left as it was: weights come from a forked CPU generator seeded with `seed`.
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    clip_tok = _tiny_clip_tokenizer()
    t5_tok = _tiny_t5_tokenizer(max_sequence_length)
    c, s = TINY_LATENT_CHANNELS, TINY_VAE_SCALE
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(int(seed))
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=4 * c + 4 * c + 4 * s * s, out_channels=4 * c, num_layers=1,
            num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
            joint_attention_dim=TINY_TEXT_WIDTH, pooled_projection_dim=TINY_TEXT_WIDTH,
            guidance_embeds=True, axes_dims_rope=(4, 6, 6),
        )
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 16, 16), layers_per_block=1,
            latent_channels=c, norm_num_groups=4, sample_size=64, use_quant_conv=False,
            use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611,
        )
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(clip_tok), hidden_size=TINY_TEXT_WIDTH, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=77, projection_dim=TINY_TEXT_WIDTH,
            bos_token_id=clip_tok.bos_token_id, eos_token_id=clip_tok.eos_token_id,
            pad_token_id=clip_tok.pad_token_id,
        ))
        text_encoder_2 = T5EncoderModel(T5Config(
            vocab_size=len(t5_tok), d_model=TINY_TEXT_WIDTH, d_ff=64, d_kv=8, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, pad_token_id=t5_tok.pad_token_id, eos_token_id=t5_tok.eos_token_id,
        ))
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )  # FLUX.1's scheduler config
    for module in (transformer, vae, text_encoder, text_encoder_2):
        module.eval()  # built modules start in train mode (T5 dropout would make outputs random)
    return dict(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=clip_tok,
                text_encoder_2=text_encoder_2, tokenizer_2=t5_tok, transformer=transformer)


# -- the pipeline ------------------------------------------------------------------------------
def build_pipeline(model: ModelConfig, *, device=None, max_sequence_length: int | None = None,
                   with_transformer: bool = True):
    """The FluxFillPipeline of `model`, on `device` (default: `model.device`), in `model.dtype`, in eval mode.

    `max_sequence_length` bounds the T5 prompt length (FLUX refuses more than 512); the tiny T5 tokenizer
    is given it as its model_max_length. `with_transformer=False`: the VAE, text encoders and scheduler
    only (`pipe.transformer` is None), for encoding, or for a caller that sets its own transformer; the
    base transformer (FLUX.1 Fill: 12B parameters, 24 GB in bf16) is then never read.
    """
    from diffusers import FluxFillPipeline

    if model.kind != "flux-fill":
        raise ConfigError(f"unknown model.kind {model.kind!r}; valid kinds: flux-fill")
    max_len = T5_MAX_LENGTH if max_sequence_length is None else int(max_sequence_length)
    if not 1 <= max_len <= T5_MAX_LENGTH:
        raise ConfigError(f"max_sequence_length must be in 1..{T5_MAX_LENGTH}, got {max_len}")
    dtype = resolve_dtype(model.dtype)
    target = resolve_device(model.device if device is None else device)
    if model.tiny:
        parts = build_tiny_components(model.seed, max_len)
        pipe = FluxFillPipeline(**{**parts, **({} if with_transformer else {"transformer": None})})
    else:
        skip = {} if with_transformer else {"transformer": None}  # diffusers loads no component given as None
        try:
            with warnings.catch_warnings():  # diffusers >= 0.40 renames torch_dtype; older ones need it
                warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
                pipe = FluxFillPipeline.from_pretrained(model.pretrained, torch_dtype=dtype, **skip)
        except (OSError, ValueError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelError(
                f"cannot load FLUX.1 Fill from {model.pretrained!r} ({first}); give model.pretrained a local "
                "folder, or pre-download it into HF_HOME and set HF_HUB_OFFLINE=1 on nodes without internet"
            ) from exc
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, name)
        if module is None:
            continue
        # Module by module, and the dtype only when it changes: diffusers' pipeline-level `.to` warns
        # about fp32-kept modules on every call, even when there are none.
        if module.dtype == dtype:
            module.to(device=target)
        else:
            module.to(device=target, dtype=dtype)
        module.eval()
    pipe.set_progress_bar_config(disable=True)  # callers show their own progress
    return pipe


def fill_in_channels(pipe) -> int:
    """The input width a FLUX Fill transformer for this pipeline's VAE has: packed noisy latents (4C),
    packed masked-image latents (4C) and the packed mask (4 s^2); 384 for FLUX.1 Fill (C = 16, s = 8)."""
    return 8 * pipe.latent_channels + 4 * pipe.vae_scale_factor ** 2


def _vae_scale(pipe) -> int:
    return pipe.vae_scale_factor


def _exec(pipe) -> tuple[torch.device, torch.dtype]:
    module = pipe.vae if pipe.transformer is None else pipe.transformer  # all on one device, in one dtype
    return module.device, module.dtype


# -- prompts -----------------------------------------------------------------------------------
@dataclass
class PromptEmbeds:
    """FLUX text conditioning of B prompts: T5 sequence [B,L,D], CLIP pooled [B,Dp], text ids [L,3]."""

    prompt_embeds: torch.Tensor
    pooled: torch.Tensor
    text_ids: torch.Tensor

    def repeat(self, n: int) -> "PromptEmbeds":
        """The embeddings of one prompt repeated n times along the batch (for n candidates)."""
        return PromptEmbeds(self.prompt_embeds.expand(n, -1, -1).contiguous(),
                            self.pooled.expand(n, -1).contiguous(), self.text_ids)


@torch.no_grad()
def encode_prompt(pipe, prompt: str | list[str], max_sequence_length: int = T5_MAX_LENGTH) -> PromptEmbeds:
    device, _ = _exec(pipe)
    embeds, pooled, text_ids = pipe.encode_prompt(
        prompt=prompt, prompt_2=None, device=device, num_images_per_prompt=1,
        max_sequence_length=max_sequence_length,
    )
    return PromptEmbeds(embeds, pooled, text_ids)


# -- latents -----------------------------------------------------------------------------------
def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """[B,C,h,w] -> [B,(h/2)(w/2),4C] (FLUX's 2x2 patch tokens)."""
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), 4 * c)


to_tokens = pack_latents  # the training cache's layout of latents (fyp.models.family's common name)


def unpack_latents(packed: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[B,(h/2)(w/2),4C] -> [B,C,h,w]; h, w are latent sizes."""
    b, _, c4 = packed.shape
    return packed.view(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c4 // 4, h, w)


def _batched(array: np.ndarray, ndim: int) -> np.ndarray:
    array = np.asarray(array)
    return array[None] if array.ndim == ndim - 1 else array


def _image_tensor(pipe, image_uint8) -> torch.Tensor:
    """uint8 [B,H,W,3] -> float [B,3,H,W] in [-1,1], through the pipeline's own preprocessing."""
    # Contiguous NCHW: a channels-last view (what permuting an HWC array gives) sends the VAE's
    # convolutions down another kernel, off by ~1e-6 from the pipeline's own encoding.
    image = torch.from_numpy(_batched(image_uint8, 4)).permute(0, 3, 1, 2).contiguous().float() / 255.0
    return pipe.image_processor.preprocess(image, height=image.shape[2], width=image.shape[3])


def _vae_latents(pipe, pixels: torch.Tensor) -> torch.Tensor:
    device, dtype = _exec(pipe)
    posterior = pipe.vae.encode(pixels.to(device=device, dtype=pipe.vae.dtype)).latent_dist
    latents = (posterior.mode() - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
    return latents.to(dtype)


@torch.no_grad()
def encode_image_latents(pipe, image_uint8) -> torch.Tensor:
    """Unpacked, scaled VAE latents [B,C,h,w] of uint8 images (the x0 of the flow-matching loss)."""
    return _vae_latents(pipe, _image_tensor(pipe, image_uint8))


@torch.no_grad()
def encode_condition(pipe, image_uint8, mask) -> torch.Tensor:
    """FLUX Fill's condition [B, L, 4C + 4 s^2]: packed latents of the masked image and the packed mask.

    Reproduces `FluxFillPipeline.prepare_mask_latents` (holes of the image set to 0 in [-1,1] space,
    mask binarised at 0.5, 1 = hole), with the VAE posterior mean instead of a sample.
    """
    pixels = _image_tensor(pipe, image_uint8)
    b, _, height, width = pixels.shape
    mask = torch.from_numpy(_batched(np.asarray(mask, dtype=np.float32), 3))[:, None]
    if mask.shape[0] != b or mask.shape[2:] != pixels.shape[2:]:
        raise ValueError(f"mask {tuple(mask.shape)} does not match images {tuple(pixels.shape)}")
    mask = pipe.mask_processor.preprocess(mask, height=height, width=width)
    masked = _vae_latents(pipe, pixels * (1 - mask))
    s = _vae_scale(pipe)
    h, w = height // s, width // s
    # [B,1,H,W] -> [B, s*s, h, w]: each latent pixel carries its s x s block of mask pixels.
    mask_lat = mask[:, 0].view(b, h, s, w, s).permute(0, 2, 4, 1, 3).reshape(b, s * s, h, w)
    device, dtype = _exec(pipe)
    return torch.cat([pack_latents(masked), pack_latents(mask_lat.to(device=device, dtype=dtype))], dim=-1)


def initial_noise(pipe, seeds: list[int], height: int, width: int) -> torch.Tensor:
    """Packed Gaussian starting latents [len(seeds), L, 4C], one CPU generator per seed.

    Drawn on the CPU in float32 whatever the device, so a seed gives the same noise on any machine and
    a candidate's noise depends on its own seed only (not on the batch it is generated in).
    """
    device, dtype = _exec(pipe)
    s = _vae_scale(pipe)
    shape = (1, pipe.vae.config.latent_channels, height // s, width // s)
    noise = [torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(seed)), dtype=torch.float32)
             for seed in seeds]
    return pack_latents(torch.cat(noise)).to(device=device, dtype=dtype)


def sampling_timesteps(pipe, steps: int, height: int, width: int) -> torch.Tensor:
    """FluxFillPipeline's schedule: sigmas 1 -> 1/steps, shifted by the image's token count."""
    from diffusers.pipelines.flux.pipeline_flux_fill import calculate_shift, retrieve_timesteps

    s = _vae_scale(pipe)
    seq_len = (height // s // 2) * (width // s // 2)
    config = pipe.scheduler.config
    mu = calculate_shift(seq_len, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                         config.get("base_shift", 0.5), config.get("max_shift", 1.15))
    sigmas = np.linspace(1.0, 1 / steps, steps)
    timesteps, _ = retrieve_timesteps(pipe.scheduler, steps, _exec(pipe)[0], sigmas=sigmas, mu=mu)
    pipe.scheduler.set_begin_index(0)  # as the pipeline does at strength 1
    return timesteps


@torch.no_grad()
def denoise(pipe, prompt: PromptEmbeds, condition: torch.Tensor, noise: torch.Tensor, *, height: int, width: int,
            steps: int, guidance: float, callback=None, batch_invariant: bool = True) -> torch.Tensor:
    """FluxFillPipeline's sampling loop from given noise; returns the final packed latents [B, L, 4C].

    `prompt` and `condition` hold one row (repeated to the batch) or one row per noise row; `callback(i)`
    is called after step i. With `batch_invariant` (default) every row's result is independent of the
    batch it is in (see fyp.models.batch_invariant). This is the loop of `FluxFillPipeline.__call__` (diffusers 0.42) on the
    pipeline's own components. It is restated because `__call__` cannot take a precomputed condition
    (it preprocesses `image` unconditionally and refuses `image` together with `masked_image_latents`),
    and because with a list of generators it samples the masked image's VAE posterior with the first
    generator only, which would make a candidate depend on the batch it is generated in.
    """
    batch = noise.shape[0]
    if prompt.prompt_embeds.shape[0] == 1 and batch > 1:
        prompt = prompt.repeat(batch)
    if condition.shape[0] == 1 and batch > 1:
        condition = condition.expand(batch, -1, -1)
    device, dtype = _exec(pipe)
    s = _vae_scale(pipe)
    latent_ids = pipe._prepare_latent_image_ids(batch, height // s // 2, width // s // 2, device, dtype)
    guidance_vec = (torch.full([batch], guidance, device=device, dtype=torch.float32)
                    if pipe.transformer.config.guidance_embeds else None)
    latents = noise.to(device=device, dtype=dtype)
    condition = condition.to(device=device, dtype=dtype)
    for i, t in enumerate(sampling_timesteps(pipe, steps, height, width)):
        with _batch_invariant(pipe.transformer) if batch_invariant else contextlib.nullcontext():
            pred = pipe.transformer(
                hidden_states=torch.cat((latents, condition), dim=2), timestep=t.expand(batch).to(dtype) / 1000,
                guidance=guidance_vec, pooled_projections=prompt.pooled, encoder_hidden_states=prompt.prompt_embeds,
                txt_ids=prompt.text_ids, img_ids=latent_ids, return_dict=False,
            )[0]
        latents = pipe.scheduler.step(pred, t, latents, return_dict=False)[0]
        if callback is not None:
            callback(i)
    return latents


@torch.no_grad()
def decode_latents(pipe, packed: torch.Tensor, height: int, width: int) -> tuple[np.ndarray, torch.Tensor]:
    """Packed latents -> (uint8 images [B,H,W,3], unpacked latents [B,C,h,w]).

    The VAE decodes one image at a time: convolution kernels, like matrix products, may round
    differently for a different batch size, and an image must not depend on its batch.
    """
    s = _vae_scale(pipe)
    latents = unpack_latents(packed, height // s, width // s)
    vae_in = (latents / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor).to(pipe.vae.dtype)
    pixels = torch.cat([pipe.vae.decode(row[None], return_dict=False)[0] for row in vae_in])
    pixels = (pixels.float() / 2 + 0.5).clamp(0, 1)  # the pipeline's denormalisation
    images = (pixels * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return images, latents
