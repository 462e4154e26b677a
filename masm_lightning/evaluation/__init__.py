"""Evaluation: frame/video metrics, results tables, figures and the robustness sweep.

Import the modules themselves (``masm_lightning.evaluation.metrics``, …): this package imports nothing, so the
metrics do not load matplotlib.
"""
