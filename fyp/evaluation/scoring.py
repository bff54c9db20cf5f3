"""The metrics of a shard's blended results: every reward model, pixel metrics, LPIPS, removal metrics, the judge.

`compute_metrics(run, benchmark, items)` takes the shard's valid items (blended result, original, mask,
prompt, and the ground truth on object removal) and returns {metric: float32 [n]} plus a failure count per
metric. A model that cannot be built or raises while scoring leaves NaN for its metric and a one-line reason
in `failures` (the shard goes on); an unparseable judge answer is a NaN counted by the judge.

Metric names: `<reward>` (each reward on the whole blended image, as the paper), `psnr_kept`, `mse_kept`,
`lpips_kept` (against the original, kept region), the bias statistics `hole_luminance`, `hole_edge_density`,
`hole_colourfulness`; object removal adds `psnr_bg`, `psnr_gt`, `lpips_gt`, `clip_sim_gt` (CLIP image-image
cosine between result and ground truth); with a judge: `judge_total` (40-30-30), `judge_aesthetic`,
`judge_structural`, `judge_semantic`, `judge_total_<variant>` (e.g. judge_total_30-40-30) for the other weight variants, and with
`eval.judge.bias` (default on) `judge_brightness`, `judge_composition`, `judge_colour`.
"""
from __future__ import annotations

import gc
import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from ..data.sample import one_line
from ..run import Run
from .pixels import hole_statistics, kept_metrics, removal_metrics

log = logging.getLogger("fyp.evaluation")


@dataclass
class Items:
    results: np.ndarray  # uint8 [n,H,W,3] blended
    originals: np.ndarray  # uint8 [n,H,W,3]
    masks: np.ndarray  # uint8 [n,H,W], 1 = hole
    prompts: list[str]
    targets: np.ndarray | None = None  # uint8 [n,H,W,3] ground truth (object removal)

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass
class MetricSet:
    values: dict[str, np.ndarray] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)

    def put(self, name: str, values, failures: int = 0) -> None:
        self.values[name] = np.asarray(values, dtype=np.float32)
        self.failures[name] = self.failures.get(name, 0) + int(failures)

    def fail(self, name: str, n: int, reason: str) -> None:
        self.put(name, np.full(n, np.nan, np.float32), n)
        self.reasons[name] = one_line(reason)  # one line, no memory addresses: the same on a re-run
        log.warning("eval metric %s failed for %d items: %s", name, n, self.reasons[name])


def _release(*objects) -> None:
    del objects
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def reward_specs(run: Run):
    wanted = list(run.config.eval.rewards or [])
    specs = list(run.config.rewards)
    if wanted:
        specs = [run.config.reward(name) for name in wanted]  # unknown names raise with the run's list
    return specs


def score_rewards(run: Run, items: Items, out: MetricSet) -> None:
    from ..rewards import build as build_reward

    n = len(items)
    images = torch.from_numpy(np.ascontiguousarray(items.results))
    for spec in reward_specs(run):
        if spec.python:
            out.fail(spec.name, n, f"reward {spec.name} runs in its own interpreter ({spec.python}); eval scores "
                                   "in-process only")
            continue
        try:
            model = build_reward(spec.name, tiny=spec.tiny, pretrained=spec.pretrained, device=spec.device,
                                 dtype=spec.dtype, **spec.options)
            extra = {"masks": torch.from_numpy(items.masks)} if getattr(model, "accepts_masks", False) else {}
            values = []
            for i in range(0, n, max(1, spec.batch_size)):
                part = {k: v[i:i + spec.batch_size] for k, v in extra.items()}
                values.append(model.score(images[i:i + spec.batch_size], items.prompts[i:i + spec.batch_size],
                                          **part).float().numpy())
            values = np.concatenate(values) if values else np.zeros(0, np.float32)
            out.put(spec.name, values, int((~np.isfinite(values)).sum()))
            _release(model)
        except Exception as exc:  # noqa: BLE001 - one broken reward must not stop the shard
            out.fail(spec.name, n, f"{type(exc).__name__}: {exc}")


def pixel_metrics(items: Items, out: MetricSet, lpips_backbone: str | None = "auto") -> str:
    """Kept-region, removal and bias statistics; LPIPS. Returns the LPIPS backbone used."""
    from .lpips_metric import LPIPSMetric

    per_item = [kept_metrics(r, o, m) | hole_statistics(r, m) for r, o, m in
                zip(items.results, items.originals, items.masks)]
    if items.targets is not None:
        for row, r, t, m in zip(per_item, items.results, items.targets, items.masks):
            row.update(removal_metrics(r, t, m))
    for name in (per_item[0] if per_item else {}):
        values = np.array([row[name] for row in per_item], np.float32)
        out.put(name, values, int((~np.isfinite(values)).sum()))
    metric = LPIPSMetric(lpips_backbone, device="cuda" if torch.cuda.is_available() else "cpu")
    keep = (items.masks == 0).astype(np.float32)
    out.put("lpips_kept", metric.distance(items.results, items.originals, keep))
    if items.targets is not None:
        out.put("lpips_gt", metric.distance(items.results, items.targets))
    return metric.backbone


def clip_similarity(run: Run, items: Items, out: MetricSet) -> None:
    """CLIP image-image cosine of result and ground truth, with the run's clipscore model (tiny if the run is)."""
    from ..rewards import build as build_reward

    n = len(items)
    try:
        try:
            spec = run.config.reward("clipscore")
            kwargs = dict(tiny=spec.tiny, pretrained=spec.pretrained, device=spec.device, dtype=spec.dtype)
        except ValueError:
            kwargs = dict(tiny=run.config.model.tiny, pretrained="openai/clip-vit-large-patch14")
        model = build_reward("clipscore", **kwargs)
        feats = []
        with torch.no_grad():
            for images in (items.results, items.targets):
                pixels = model.transform(torch.from_numpy(np.ascontiguousarray(images)), model.device, model.dtype)
                feats.append(torch.nn.functional.normalize(model.encode_images(pixels).float(), dim=-1))
        out.put("clip_sim_gt", (feats[0] * feats[1]).sum(-1).cpu().numpy())
        _release(model)
    except Exception as exc:  # noqa: BLE001
        out.fail("clip_sim_gt", n, f"{type(exc).__name__}: {exc}")


def judge_metrics(judge_cfg: dict, items: Items, out: MetricSet) -> None:
    from ..rewards.judge import WEIGHT_VARIANTS, Judge, build_judge

    n = len(items)
    cfg = dict(judge_cfg)
    variants = cfg.pop("variants", list(WEIGHT_VARIANTS))
    bias = cfg.pop("bias", True)
    cfg.pop("weights", None)
    try:
        base = build_judge(weights=variants[0], **cfg)
    except Exception as exc:  # noqa: BLE001
        out.fail("judge_total", n, f"judge could not be built: {type(exc).__name__}: {exc}")
        return
    originals = torch.from_numpy(np.ascontiguousarray(items.originals))
    results = torch.from_numpy(np.ascontiguousarray(items.results))
    masks = torch.from_numpy(items.masks)
    for index, variant in enumerate(variants):
        judge = Judge(base.ask, variant, base.out_of_range)
        try:
            judged = judge.judge_batch(originals, masks, items.prompts, results)
        except Exception as exc:  # noqa: BLE001 - a broken backend: NaN and a reason, not a dead shard
            out.fail("judge_total" if index == 0 else f"judge_total_{variant}", n, f"{type(exc).__name__}: {exc}")
            continue
        totals = np.array([j.total for j in judged], np.float32)
        if index == 0:
            out.put("judge_total", totals, judge.failures)
            for crit in ("aesthetic", "structural", "semantic"):
                out.put(f"judge_{crit}", np.array([getattr(j, crit) for j in judged], np.float32),
                        int(sum(not np.isfinite(getattr(j, crit)) for j in judged)))
        else:
            out.put(f"judge_total_{variant}", totals, judge.failures)
    if bias:
        try:
            ratings = base.rate_bias(results)
            for crit in ("brightness", "composition", "colour"):
                values = np.array([getattr(r, crit) for r in ratings], np.float32)
                out.put(f"judge_{crit}", values, int((~np.isfinite(values)).sum()))
        except Exception as exc:  # noqa: BLE001
            out.fail("judge_brightness", n, f"{type(exc).__name__}: {exc}")
    _release(base)


def compute_metrics(run: Run, benchmark: str, items: Items) -> tuple[MetricSet, dict]:
    """Every metric of `items`; returns (metrics, info) where info records the LPIPS backbone used."""
    out = MetricSet()
    if len(items) == 0:
        return out, {}
    options = run.config.eval.options or {}
    backbone = pixel_metrics(items, out, options.get("lpips_backbone", "auto"))
    score_rewards(run, items, out)
    if items.targets is not None:
        clip_similarity(run, items, out)
    if run.config.eval.judge:
        judge_metrics(run.config.eval.judge, items, out)
    return out, {"lpips_backbone": backbone}
