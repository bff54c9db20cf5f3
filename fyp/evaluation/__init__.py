"""Evaluation, analysis and reports (SPEC sections 5 and 6): benchmark generation with blending, metrics and
their bootstrap summary, paper-shaped tables, the bias and scaling studies, the self-contained HTML report,
and the human A/B study with its agreement analysis. See docs/evaluation.md.

Kept import-light: the heavy modules (diffusers, reward models, LPIPS) load where they are used.
"""
