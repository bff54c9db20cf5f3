"""The pairs stage: preference pairs from the run's scores (see fyp.pairs.stage and docs/ensemble.md)."""
