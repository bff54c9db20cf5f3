"""BrushNet on mainline diffusers blocks: the branch module and the U-Net forward that takes its samples.

BrushNet (Ju et al. 2024) is a frozen SD1.5 `UNet2DConditionModel` plus a trainable branch: a copy of the
U-Net without attention that reads `cat(noisy latents, masked-image latents, keep mask)` and hands one
zero-initialised 1x1-conv output ("sample") per layer to the U-Net. This module builds the branch as
`BrushNetModel` with the state-dict keys and config of the published checkpoints (written by the
official fork's `BrushNetModel.save_pretrained`), from mainline blocks only:

    conv_in_condition      Conv2d(in + conditioning = 4 + 5, C0, 3)   [320, 9, 3, 3] for SD1.5
    time_proj, time_embedding                                          (as the U-Net's)
    down_blocks            DownBlock2D x n (resnets, downsamplers; no attention)
    brushnet_down_blocks   1 + sum(layers + downsampler) zero 1x1 convs   (12 for SD1.5)
    mid_block              mainline UNetMidBlock2D(num_layers=1, add_attention=False): 2 resnets
    brushnet_mid_block     one zero 1x1 conv
    up_blocks              UpBlock2D x n (layers + 1 resnets, upsamplers; no attention)
    brushnet_up_blocks     sum(layers + 1 + upsampler) zero 1x1 convs      (15 for SD1.5)

SD1.5's config gives 322 tensors and about 619M parameters; there is no conv_out.

`unet_forward(unet, ..., samples)` runs a mainline `UNet2DConditionModel` block by block and ADDS the
branch's samples to the main activation stream at the points of the official fork (see docs/brushnet.md):
after conv_in (the first skip is taken before the addition), after every resnet(+attention) layer and
every downsampler of the down path (the skips hold the sum), after the whole mid block, and after every
resnet(+attention) layer and every upsampler of the up path. Mainline ControlNet residuals (added to the
skips and the mid output only) are not equivalent.

Mask convention: the suite's masks are 1 = hole. The branch's conditioning channel is the official one,
1 = keep / 0 = hole, nearest-downsampled to the latent size; `keep_mask_channel` converts, and nothing
else in the suite sees the inverted mask.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D, get_down_block, get_up_block


def _zero_conv(channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels, channels, kernel_size=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


@dataclass
class BrushNetSamples:
    """What the branch hands the U-Net, in the U-Net's order of additions."""

    down: list  # [conv_in, then per down block: each resnet, then the downsampler]
    mid: torch.Tensor
    up: list  # per up block: each resnet, then the upsampler

    def scaled(self, scale: float) -> "BrushNetSamples":
        return BrushNetSamples([d * scale for d in self.down], self.mid * scale, [u * scale for u in self.up])


class BrushNetModel(ModelMixin, ConfigMixin):
    """The BrushNet branch. The config keys are the official checkpoint's, so its config.json loads as is;
    options SD1.5 does not use (class / addition embeddings, encoder projections, bgr order, global
    pooling) are refused with a one-line error rather than half-supported."""

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        conditioning_channels: int = 5,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: tuple = ("DownBlock2D",) * 4,
        mid_block_type: str | None = "MidBlock2D",
        up_block_types: tuple = ("UpBlock2D",) * 4,
        only_cross_attention=False,
        block_out_channels: tuple = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        act_fn: str = "silu",
        norm_num_groups: int | None = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 1280,
        transformer_layers_per_block=1,
        encoder_hid_dim: int | None = None,
        encoder_hid_dim_type: str | None = None,
        attention_head_dim=8,
        num_attention_heads=None,
        use_linear_projection: bool = False,
        class_embed_type: str | None = None,
        addition_embed_type: str | None = None,
        addition_time_embed_dim: int | None = None,
        num_class_embeds: int | None = None,
        upcast_attention: bool = False,
        resnet_time_scale_shift: str = "default",
        projection_class_embeddings_input_dim: int | None = None,
        brushnet_conditioning_channel_order: str = "rgb",
        conditioning_embedding_out_channels: tuple | None = (16, 32, 96, 256),
        global_pool_conditions: bool = False,
        addition_embed_type_num_heads: int = 64,
    ):
        super().__init__()
        unsupported = dict(encoder_hid_dim=encoder_hid_dim, encoder_hid_dim_type=encoder_hid_dim_type,
                           class_embed_type=class_embed_type, addition_embed_type=addition_embed_type,
                           num_class_embeds=num_class_embeds)
        for key, value in unsupported.items():
            if value is not None:
                raise ValueError(f"BrushNetModel: {key}={value!r} is not supported (SD1.5 BrushNet has none)")
        if brushnet_conditioning_channel_order != "rgb" or global_pool_conditions:
            raise ValueError("BrushNetModel: only brushnet_conditioning_channel_order='rgb' without "
                             "global_pool_conditions is supported (the published checkpoints' setting)")
        if any(t != "DownBlock2D" for t in down_block_types) or any(t != "UpBlock2D" for t in up_block_types):
            raise ValueError(f"BrushNetModel: the branch has no attention; block types must be DownBlock2D / "
                             f"UpBlock2D, got {down_block_types} / {up_block_types}")
        if mid_block_type not in ("MidBlock2D", "UNetMidBlock2D"):
            raise ValueError(f"BrushNetModel: mid_block_type must be MidBlock2D (2 resnets), got {mid_block_type!r}")
        if len(down_block_types) != len(up_block_types) or len(block_out_channels) != len(down_block_types):
            raise ValueError("BrushNetModel: down_block_types, up_block_types and block_out_channels differ in length")

        c0 = block_out_channels[0]
        time_dim = c0 * 4
        self.conv_in_condition = nn.Conv2d(in_channels + conditioning_channels, c0, kernel_size=3, padding=1)
        self.time_proj = Timesteps(c0, flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(c0, time_dim, act_fn=act_fn)
        block_kw = dict(num_layers=layers_per_block, temb_channels=time_dim, resnet_eps=norm_eps,
                        resnet_act_fn=act_fn, resnet_groups=norm_num_groups, resnet_time_scale_shift=resnet_time_scale_shift)

        self.down_blocks = nn.ModuleList()
        self.brushnet_down_blocks = nn.ModuleList([_zero_conv(c0)])
        out_ch = c0
        for i, block_type in enumerate(down_block_types):
            in_ch, out_ch = out_ch, block_out_channels[i]
            last = i == len(block_out_channels) - 1
            self.down_blocks.append(get_down_block(
                block_type, in_channels=in_ch, out_channels=out_ch, add_downsample=not last,
                downsample_padding=downsample_padding, attention_head_dim=out_ch, **block_kw))
            for _ in range(layers_per_block + (0 if last else 1)):
                self.brushnet_down_blocks.append(_zero_conv(out_ch))

        mid_ch = block_out_channels[-1]
        self.mid_block = UNetMidBlock2D(
            in_channels=mid_ch, temb_channels=time_dim, num_layers=1, resnet_eps=norm_eps, resnet_act_fn=act_fn,
            output_scale_factor=mid_block_scale_factor, resnet_time_scale_shift=resnet_time_scale_shift,
            resnet_groups=norm_num_groups, add_attention=False)
        self.brushnet_mid_block = _zero_conv(mid_ch)

        self.up_blocks = nn.ModuleList()
        self.brushnet_up_blocks = nn.ModuleList()
        reversed_ch = list(reversed(block_out_channels))
        out_ch = reversed_ch[0]
        up_kw = {**block_kw, "num_layers": layers_per_block + 1}
        for i, block_type in enumerate(up_block_types):
            last = i == len(block_out_channels) - 1
            prev_ch, out_ch = out_ch, reversed_ch[i]
            in_ch = reversed_ch[min(i + 1, len(block_out_channels) - 1)]
            self.up_blocks.append(get_up_block(
                block_type, in_channels=in_ch, out_channels=out_ch, prev_output_channel=prev_ch,
                add_upsample=not last, resolution_idx=i, attention_head_dim=out_ch, **up_kw))
            for _ in range(layers_per_block + 1 + (0 if last else 1)):
                self.brushnet_up_blocks.append(_zero_conv(out_ch))
        self.gradient_checkpointing = False

    def _layer(self, module, *args):
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return self._gradient_checkpointing_func(module, *args)
        return module(*args)

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor | None,
                brushnet_cond: torch.Tensor, conditioning_scale: float = 1.0) -> BrushNetSamples:
        """The branch's samples for the U-Net. `brushnet_cond` = cat(masked-image latents, keep mask) [B,5,h,w].

        `encoder_hidden_states` is accepted for the official signature; the branch has no cross-attention.
        """
        emb = self.time_embedding(self.time_proj(_timesteps(timestep, sample)).to(sample.dtype))
        h = self.conv_in_condition(torch.cat([sample, brushnet_cond], dim=1))
        skips = [h]
        for block in self.down_blocks:
            for resnet in block.resnets:
                h = self._layer(resnet, h, emb)
                skips.append(h)
            if block.downsamplers is not None:
                for down in block.downsamplers:
                    h = down(h)
                skips.append(h)
        down_out = [conv(x) for conv, x in zip(self.brushnet_down_blocks, skips)]
        h = self.mid_block(h, emb)
        mid_out = self.brushnet_mid_block(h)
        up_states = []
        for i, block in enumerate(self.up_blocks):
            res = skips[-len(block.resnets):]
            skips = skips[:-len(block.resnets)]
            for resnet in block.resnets:
                h = self._layer(resnet, torch.cat([h, res.pop()], dim=1), emb)
                up_states.append(h)
            if block.upsamplers is not None:
                size = skips[-1].shape[2:] if skips else None
                for up in block.upsamplers:
                    h = up(h, size)
                up_states.append(h)
        up_out = [conv(x) for conv, x in zip(self.brushnet_up_blocks, up_states)]
        out = BrushNetSamples(down_out, mid_out, up_out)
        return out if conditioning_scale == 1.0 else out.scaled(conditioning_scale)


def _timesteps(timestep, sample: torch.Tensor) -> torch.Tensor:
    t = timestep if torch.is_tensor(timestep) else torch.tensor([timestep], device=sample.device)
    t = t.to(sample.device)
    return (t[None] if t.dim() == 0 else t).expand(sample.shape[0])


def brushnet_config_from_unet(unet_config, conditioning_channels: int = 5) -> dict:
    """The branch config for a U-Net config, as the official `from_unet` derives it (attention-free blocks)."""
    cfg = dict(unet_config)
    n = len(cfg["down_block_types"])
    return dict(
        in_channels=cfg["in_channels"], conditioning_channels=conditioning_channels,
        flip_sin_to_cos=cfg["flip_sin_to_cos"], freq_shift=cfg["freq_shift"],
        down_block_types=["DownBlock2D"] * n, mid_block_type="MidBlock2D", up_block_types=["UpBlock2D"] * n,
        only_cross_attention=cfg.get("only_cross_attention", False), block_out_channels=list(cfg["block_out_channels"]),
        layers_per_block=cfg["layers_per_block"], downsample_padding=cfg["downsample_padding"],
        mid_block_scale_factor=cfg["mid_block_scale_factor"], act_fn=cfg["act_fn"],
        norm_num_groups=cfg["norm_num_groups"], norm_eps=cfg["norm_eps"],
        cross_attention_dim=cfg["cross_attention_dim"], attention_head_dim=cfg["attention_head_dim"],
        num_attention_heads=cfg.get("num_attention_heads"), use_linear_projection=cfg.get("use_linear_projection", False),
        upcast_attention=cfg.get("upcast_attention", False), resnet_time_scale_shift=cfg["resnet_time_scale_shift"],
    )


def brushnet_from_unet(unet, load_weights: bool = True) -> BrushNetModel:
    """A branch initialised from the U-Net as the paper trains it: conv_in's weight on the noisy and the
    masked-image latent channels (0 on the mask channel), the U-Net's time embedding, resnets and samplers.

    Unlike the official `from_unet`, conv_in_condition gets its OWN copy of the U-Net's conv_in bias (the
    official code assigns the U-Net's Parameter itself, which ties the two and, with the U-Net frozen,
    silently freezes that bias).
    """
    branch = BrushNetModel(**brushnet_config_from_unet(unet.config))
    if load_weights:
        c = unet.config.in_channels
        with torch.no_grad():
            weight = torch.zeros_like(branch.conv_in_condition.weight)
            weight[:, :c] = unet.conv_in.weight
            weight[:, c:2 * c] = unet.conv_in.weight
            branch.conv_in_condition.weight.copy_(weight)
            branch.conv_in_condition.bias.copy_(unet.conv_in.bias)
        branch.time_embedding.load_state_dict(unet.time_embedding.state_dict())
        for mine, theirs in ((branch.down_blocks, unet.down_blocks), (branch.mid_block, unet.mid_block),
                             (branch.up_blocks, unet.up_blocks)):
            mine.load_state_dict(theirs.state_dict(), strict=False)  # the U-Net's attentions have no place here
    return branch


# -- the U-Net with the branch's samples added -----------------------------------------------------
def check_unet(unet) -> None:
    """Refuse U-Net options SD1.5 does not have (this forward implements SD1.5's path only)."""
    cfg = unet.config
    extras = {k: cfg.get(k) for k in ("class_embed_type", "addition_embed_type", "encoder_hid_dim_type",
                                        "time_cond_proj_dim", "num_class_embeds")}
    extras = {k: v for k, v in extras.items() if v is not None}
    if extras or cfg.get("center_input_sample") or unet.mid_block is None:
        raise ValueError(f"BrushNet U-Net forward: SD1.5-style U-Nets only (unsupported: {extras or 'no mid block'})")


def unet_forward(unet, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                 samples: BrushNetSamples | None) -> torch.Tensor:
    """A mainline SD1.5 `UNet2DConditionModel` forward with the BrushNet samples added (module docstring).

    With `samples=None` it is the plain U-Net forward (the test checks it equals `unet(...)` exactly).
    """
    down_add = list(samples.down) if samples is not None else None
    up_add = list(samples.up) if samples is not None else None

    def add(h, pool):
        return h if pool is None else h + pool.pop(0)

    def layer(resnet, attn, h, emb):
        h = resnet(h, emb)
        if attn is not None:
            h = attn(h, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]
        return h

    # As mainline: an explicit upsample size only when the latent is not a multiple of the total factor.
    forward_size = any(d % 2 ** unet.num_upsamplers for d in sample.shape[-2:])
    emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=_timesteps(timestep, sample)))
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    h = unet.conv_in(sample)
    skips = [h]  # the first skip is taken before the addition
    h = add(h, down_add)
    for block in unet.down_blocks:
        attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
        for resnet, attn in zip(block.resnets, attentions):
            h = add(layer(resnet, attn, h, emb), down_add)
            skips.append(h)
        if block.downsamplers is not None:
            for down in block.downsamplers:
                h = down(h)
            h = add(h, down_add)
            skips.append(h)
    h = unet.mid_block(h, emb, encoder_hidden_states=encoder_hidden_states) \
        if getattr(unet.mid_block, "has_cross_attention", False) else unet.mid_block(h, emb)
    if samples is not None:
        h = h + samples.mid
    for block in unet.up_blocks:
        res = skips[-len(block.resnets):]
        skips = skips[:-len(block.resnets)]
        attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
        for resnet, attn in zip(block.resnets, attentions):
            h = add(layer(resnet, attn, torch.cat([h, res.pop()], dim=1), emb), up_add)
        if block.upsamplers is not None:
            size = skips[-1].shape[2:] if skips and forward_size else None
            for up in block.upsamplers:
                h = up(h, size)
            h = add(h, up_add)
    if down_add or up_add:
        raise ValueError(f"BrushNet samples left over ({len(down_add)} down, {len(up_add)} up): the branch does not "
                         f"match the U-Net's layout")
    if unet.conv_norm_out is not None:
        h = unet.conv_act(unet.conv_norm_out(h))
    return unet.conv_out(h)


def predict_noise(unet, brushnet, sample, timestep, encoder_hidden_states, condition, conditioning_scale=1.0):
    """One BrushNet step: the branch on (sample, condition), then the U-Net with its samples added."""
    samples = brushnet(sample, timestep, encoder_hidden_states, condition, conditioning_scale)
    if isinstance(samples, (tuple, list)):  # a wrapped module may hand back the fields positionally
        samples = BrushNetSamples(*samples)
    return unet_forward(unet, sample, timestep, encoder_hidden_states, samples)


def keep_mask_channel(hole: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The branch's mask channel from a suite mask: [B,1,H,W] 1 = hole -> [B,1,h,w] 1 = keep, nearest."""
    keep = 1.0 - hole.float()
    return torch.nn.functional.interpolate(keep, size=size, mode="nearest")
