"""Preference training (Diffusion-DPO / IPO / CaPO / CaEN) of inpainting models.

Kept import-light on purpose: `fyp.dpo.losses` needs only torch, and the trainer's heavy imports
(diffusers, deepspeed) live in their own modules.
"""
