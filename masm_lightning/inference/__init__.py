"""Inference: the Python API (``Detector``), runs over many inputs, explanations and the web app.

Import the modules themselves (``masm_lightning.inference.detector``, ...): this package imports nothing, so that the
video stack loads only where it is used.
"""
