"""DDPM Diffusion-DPO of the BrushNet branch: draws, noising, and the loss against an independent
implementation (forward and gradients), on the tiny BrushNet.

The independent implementation follows the Diffusion-DPO authors' training script (diffusers' DDPMScheduler
`add_noise`, per-sample mean of the squared error, `-logsigmoid(-beta/2 * (model_diff - ref_diff))`) with
the U-Net + branch prediction of tests/fixtures_brushnet.py (mainline U-Net + hooks), so none of
fyp.dpo.ddpm / fyp.dpo.losses / fyp.models.brushnet.unet_forward is used on that side.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from fixtures_brushnet import reference_unet
from fyp.config import load_preset
from fyp.dpo.data import Batch
from fyp.dpo.ddpm import BrushNet, DdpmEpsilon, alphas_cumprod, draw_pairs, noisy_and_target
from fyp.dpo.family import model_family
from fyp.dpo.losses import preference_terms
from fyp.models.brushnet_pipeline import SD15_SCHEDULER

SHAPE = (4, 8, 8)


def test_draws_are_uniform_integer_timesteps_and_pure_functions_of_the_pair():
    a = draw_pairs(list(range(400)), [0] * 400, SHAPE, seed=1)
    assert a.t.dtype == torch.int64 and int(a.t.min()) >= 0 and int(a.t.max()) <= 999
    assert 350 < float(a.t.float().mean()) < 650 and int(a.t.max()) > 950 and int(a.t.min()) < 50
    b = draw_pairs([7, 3], [0, 0], SHAPE, seed=1)  # another batch, another order
    assert torch.equal(b.t, a.t[[7, 3]]) and torch.equal(b.noise_w, a.noise_w[[7, 3]])
    assert torch.equal(a.noise_w, a.noise_l)  # DPO / IPO: shared
    c = draw_pairs([7], [0], SHAPE, seed=1, shared_noise=False)  # CaPO / CaEN: the loser's own
    assert torch.equal(c.noise_w[0], a.noise_w[7]) and not torch.equal(c.noise_l[0], c.noise_w[0])
    assert not torch.equal(draw_pairs([7], [1], SHAPE, seed=1).noise_w[0], a.noise_w[7])  # epochs differ
    with pytest.raises(ValueError, match="uniformly"):
        draw_pairs([0], [0], SHAPE, seed=1, sampling="logit-normal")


def test_noising_is_ddpm_add_noise_of_sd15():
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(SD15_SCHEDULER)
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, *SHAPE, generator=gen), torch.randn(3, *SHAPE, generator=gen)
    t = torch.tensor([0, 500, 999])
    x_t, target = noisy_and_target(x0, eps, t, alphas_cumprod(SD15_SCHEDULER))
    torch.testing.assert_close(x_t, scheduler.add_noise(x0, eps, t), rtol=0, atol=1e-6)
    assert torch.equal(target, eps)
    assert abs(float(scheduler.alphas_cumprod[999]) - 0.0047) < 1e-3  # SD1.5's scaled-linear schedule


@pytest.fixture(scope="module")
def family_and_batch():
    cfg = load_preset("tiny-brushnet")
    family = model_family(cfg)
    assert isinstance(family, BrushNet)
    policy, scheduler_config = family.load_model(None)
    torch.manual_seed(0)
    with torch.no_grad():  # a policy that differs from the reference, so the loss has a gradient
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    reference = family.load_model(None)[0]
    gen = torch.Generator().manual_seed(2)
    b = 3
    mask = torch.zeros(b, 1, 8, 8)
    mask[:, :, 2:6, 1:5] = 1
    batch = Batch(torch.randn(b, *SHAPE, generator=gen), torch.randn(b, *SHAPE, generator=gen),
                  torch.randn(b, 5, 8, 8, generator=gen), mask, torch.randn(b, 77, 32, generator=gen),
                  torch.randn(b, 32, generator=gen), torch.zeros(b), torch.randn(b, 5, 8, 8, generator=gen))
    objective = family.objective(policy, scheduler_config, type("D", (), {"latent_tokens": SHAPE})(),
                                 shared_noise=True, device=torch.device("cpu"), dtype=torch.float32)
    assert isinstance(objective, DdpmEpsilon)
    return family, objective, policy, reference, batch


def independent_dpo(unet, policy, reference, batch, t, noise, beta, mask):
    """The Diffusion-DPO training script's loss, on DDPMScheduler and the hook-based reference forward."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(SD15_SCHEDULER)
    latents = torch.cat([batch.latent_w, batch.latent_l])
    eps = torch.cat([noise, noise])
    tt = torch.cat([t, t])
    noisy = scheduler.add_noise(latents, eps, tt)
    text = torch.cat([batch.prompt_embeds] * 2)
    cond = torch.cat([batch.condition, batch.condition_l])

    def prediction(branch):
        return reference_unet(unet, noisy, tt, text, branch(noisy, tt, text, cond))

    model_pred = prediction(policy)
    with torch.no_grad():
        ref_pred = prediction(reference)
    m = torch.cat([mask, mask])
    model_losses = ((m * (model_pred - eps)) ** 2).mean(dim=[1, 2, 3])
    ref_losses = ((m * (ref_pred - eps)) ** 2).mean(dim=[1, 2, 3])
    model_w, model_l = model_losses.chunk(2)
    ref_w, ref_l = ref_losses.chunk(2)
    inside = -0.5 * beta * ((model_w - model_l) - (ref_w - ref_l))
    return -F.logsigmoid(inside).mean(), inside


def test_ddpm_dpo_loss_and_gradients_match_an_independent_implementation(family_and_batch):
    family, objective, policy, reference, batch = family_and_batch
    beta = 8000.0
    rows, epochs = [0, 1, 2], [0, 0, 0]
    noised = objective.noised(batch, rows, epochs)
    draw = noised.draw

    policy.zero_grad()
    pred_w, pred_l = objective.predict(policy, noised)
    with torch.no_grad():
        ref_w, ref_l = objective.predict(reference, noised)
    terms = preference_terms(pred_w, pred_l, ref_w, ref_l, noised.target_w, noised.target_l, beta=beta, kind="dpo",
                             mask=batch.loss_mask)
    terms.loss.backward()
    mine = {n: p.grad.clone() for n, p in policy.named_parameters()}

    policy.zero_grad()
    loss, inside = independent_dpo(family.unet, policy, reference, batch, draw.t, draw.noise_w, beta, batch.loss_mask)
    loss.backward()
    theirs = {n: p.grad.clone() for n, p in policy.named_parameters()}

    torch.testing.assert_close(terms.loss, loss, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(terms.inside, inside, rtol=1e-4, atol=1e-4)
    assert float(loss.detach()) > 0 and float(inside.detach().abs().max()) > 1e-3  # not a trivial point
    total = torch.cat([g.flatten() for g in theirs.values()]).norm()
    assert total > 0
    for name in mine:
        torch.testing.assert_close(mine[name], theirs[name], rtol=1e-3, atol=1e-5 * float(total), msg=name)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in family.unet.parameters())  # the U-Net is frozen


def test_each_side_uses_its_own_condition(family_and_batch):
    _, objective, policy, _, batch = family_and_batch
    with torch.no_grad():
        own = objective.predict(policy, objective.noised(batch, [0, 1, 2], [0] * 3))
        shared = copy.copy(batch)
        shared.condition_l = None  # the loser would get the winner's condition
        same = objective.predict(policy, objective.noised(shared, [0, 1, 2], [0] * 3))
    assert torch.equal(own[0], same[0]) and (own[1] - same[1]).abs().max() > 1e-4


def test_only_the_branch_is_trainable(family_and_batch):
    from fyp.config import ConfigError, TrainConfig

    family, _, policy, _, _ = family_and_batch
    family.set_trainable(policy, TrainConfig(trainable="all"))
    assert all(p.requires_grad for p in policy.parameters())
    assert not any(p.requires_grad for p in family.unet.parameters())
    with pytest.raises(ConfigError, match="whole branch"):
        family.set_trainable(policy, TrainConfig(trainable="lora"))
