"""Scheduling the pipeline's stages: on this machine (submitit's LocalExecutor) or on Slurm (array jobs,
afterok chains, requeue, one-call status). See docs/hpc.md. Knows nothing of what the stages compute."""
