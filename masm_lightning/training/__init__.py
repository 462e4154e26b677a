"""Training: the LightningModule, backbone building, lean checkpoint state, the optimizer, FMSD layer selection,
checkpointing and run folders, the CSV logger, and the Lightning callbacks.

Import the modules themselves (``masm_lightning.training.module``, ...): this package imports nothing, so that a light
module of it does not load the others.
"""
