"""LPIPS (Zhang et al. 2018, the `lpips` package, AlexNet variant v0.1) built without any download.

LPIPS = a torchvision AlexNet backbone (ImageNet weights) + linear heads (shipped inside the `lpips` package).
`build_lpips` always builds the network with `pnet_rand=True` (torchvision never downloads) and then loads:
- the backbone's ImageNet weights from `backbone` (a path to torchvision's `alexnet-owt-7be5be79.pth` state
  dict), or from torch's hub cache (`$TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth`, where torchvision
  itself would have stored it) when `backbone="auto"` and the file is there;
- the linear heads from the package's own `weights/v0.1/alex.pth`;
both with `torch.load(..., weights_only=True)`. The loading path is the same with or without the backbone
weights; offline machines without the cached file (this dev box) get a seeded random backbone, and
`LPIPSMetric.backbone` says so ("random") — such numbers rank nothing and only prove the code path.

Masked LPIPS (BrushNet's evaluation): both images multiplied by the region mask before the network.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("fyp.evaluation")
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"


def cached_backbone() -> Path | None:
    path = Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE
    return path if path.is_file() else None


def _backbone_state(model, state: dict) -> dict:
    """torchvision AlexNet keys (features.<i>.weight) -> lpips keys (net.slice<k>.<i>.weight)."""
    mapped = {}
    for key in model.state_dict():
        if key.startswith("net.slice"):
            _, _, index, leaf = key.split(".")
            source = f"features.{index}.{leaf}"
            if source not in state:
                raise ValueError(f"LPIPS backbone file lacks {source}; expected torchvision's AlexNet state dict")
            mapped[key] = state[source]
    return mapped


class LPIPSMetric:
    """`distance(a, b, region=None)`: LPIPS of uint8 [B,H,W,3] pairs -> float [B]; region [B,H,W] in {0,1}."""

    def __init__(self, backbone: str | None = "auto", device: str | torch.device = "cpu", seed: int = 0):
        import lpips

        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torchvision's "pretrained is deprecated" from lpips
            torch.manual_seed(seed)
            model = lpips.LPIPS(pretrained=False, net="alex", version="0.1", pnet_rand=True, verbose=False)
        source = cached_backbone() if backbone == "auto" else (Path(backbone) if backbone else None)
        if source is not None:
            if not source.is_file():
                raise FileNotFoundError(f"LPIPS backbone weights {source} do not exist; give torchvision's {ALEXNET_FILE}")
            model.load_state_dict(_backbone_state(model, torch.load(source, map_location="cpu", weights_only=True)),
                                  strict=False)
            self.backbone = str(source)
        else:
            self.backbone = "random"
            log.warning("LPIPS: no AlexNet ImageNet weights (looked for %s in %s); using a seeded random backbone — "
                        "LPIPS values are not comparable to published ones", ALEXNET_FILE, Path(torch.hub.get_dir()) / "checkpoints")
        heads = Path(os.path.dirname(lpips.__file__)) / "weights" / "v0.1" / "alex.pth"
        model.load_state_dict(torch.load(heads, map_location="cpu", weights_only=True), strict=False)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)

    @torch.no_grad()
    def distance(self, a: np.ndarray, b: np.ndarray, region: np.ndarray | None = None, batch_size: int = 16) -> np.ndarray:
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or a.ndim != 4:
            raise ValueError(f"LPIPS: images must both be [B,H,W,3], got {a.shape} and {b.shape}")
        out = []
        for i in range(0, a.shape[0], batch_size):
            ta = torch.from_numpy(a[i:i + batch_size]).permute(0, 3, 1, 2).float().div(127.5).sub(1)
            tb = torch.from_numpy(b[i:i + batch_size]).permute(0, 3, 1, 2).float().div(127.5).sub(1)
            if region is not None:
                r = torch.from_numpy(np.asarray(region[i:i + batch_size], np.float32))[:, None]
                ta, tb = ta * r, tb * r
            out.append(self.model(ta.to(self.device), tb.to(self.device)).flatten().float().cpu())
        return torch.cat(out).numpy() if out else np.zeros(0, np.float32)
