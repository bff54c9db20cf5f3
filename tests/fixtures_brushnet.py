"""Reference forwards of the official BrushNet fork, written independently of fyp.models.brushnet.

From the fork's code (TencentARC/BrushNet: models/brushnet.py, unets/unet_2d_condition.py,
unets/unet_2d_blocks.py), on the same mainline modules:
- `reference_unet` runs mainline `UNet2DConditionModel.__call__` itself, with forward hooks that add the
  branch's samples where the fork's modified blocks add them (a pre-hook on the first down block for the
  conv_in sample, whose skip the U-Net took before; hooks on every resnet of a plain block, every attention
  of a cross-attention block, every down/upsampler, and the mid block);
- `reference_branch` runs mainline `DownBlock2D.forward` (which returns the per-layer states the fork
  zero-convs) and captures the up blocks' per-resnet / upsampler outputs with hooks (the fork's
  `return_res_samples`).
"""
from __future__ import annotations

import torch

from fyp.models.brushnet import BrushNetSamples


def reference_branch(branch, x, t, text, cond) -> BrushNetSamples:
    """The fork's BrushNetModel.forward on the same modules (mainline block forwards + hooks for up states)."""
    emb = branch.time_embedding(branch.time_proj(t).to(x.dtype))
    h = branch.conv_in_condition(torch.cat([x, cond], 1))
    res = (h,)
    for block in branch.down_blocks:
        h, states = block(hidden_states=h, temb=emb)  # mainline returns each resnet and the downsampler
        res += states
    down = [conv(s) for conv, s in zip(branch.brushnet_down_blocks, res)]
    h = branch.mid_block(h, emb)
    mid = branch.brushnet_mid_block(h)
    ups = []
    for i, block in enumerate(branch.up_blocks):
        last = i == len(branch.up_blocks) - 1
        skip = res[-len(block.resnets):]
        res = res[:-len(block.resnets)]
        size = None if last else res[-1].shape[2:]
        hooks = [m.register_forward_hook(lambda _m, _i, out: ups.append(out))
                 for m in list(block.resnets) + list(block.upsamplers or [])]
        h = block(hidden_states=h, temb=emb, res_hidden_states_tuple=skip, upsample_size=size)
        for hook in hooks:
            hook.remove()
    up = [conv(s) for conv, s in zip(branch.brushnet_up_blocks, ups)]
    return BrushNetSamples(down, mid, up)


def _add_hook(pool, where: list):
    def hook(_module, _inputs, out):
        where.append(_module)
        if isinstance(out, tuple):
            return (out[0] + pool.pop(0),) + tuple(out[1:])
        return out + pool.pop(0)
    return hook


def reference_unet(unet, x, t, text, samples: BrushNetSamples, move_conv_in: bool = False) -> torch.Tensor:
    """The fork's U-Net forward: mainline `unet(...)` with the additions made by hooks at the fork's points.

    `move_conv_in`: add the conv_in sample before the first skip is taken (a moved injection point).
    """
    down, up = list(samples.down), list(samples.up)
    first = down.pop(0)
    order: list = []
    hooks = []
    if move_conv_in:
        hooks.append(unet.conv_in.register_forward_hook(lambda _m, _i, out: out + first))
    else:
        def pre(_module, args, kwargs):
            kwargs["hidden_states"] = kwargs["hidden_states"] + first
            return args, kwargs
        hooks.append(unet.down_blocks[0].register_forward_pre_hook(pre, with_kwargs=True))
    for block in unet.down_blocks:
        layers = list(block.attentions) if hasattr(block, "attentions") else list(block.resnets)
        for module in layers + list(block.downsamplers or []):
            hooks.append(module.register_forward_hook(_add_hook(down, order)))
    hooks.append(unet.mid_block.register_forward_hook(lambda _m, _i, out: out + samples.mid))
    for block in unet.up_blocks:
        layers = list(block.attentions) if hasattr(block, "attentions") else list(block.resnets)
        for module in layers + list(block.upsamplers or []):
            hooks.append(module.register_forward_hook(_add_hook(up, order)))
    try:
        out = unet(x, t, encoder_hidden_states=text, return_dict=False)[0]
    finally:
        for hook in hooks:
            hook.remove()
    assert not down and not up, "every sample is used once"
    return out
