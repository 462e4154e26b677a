"""Sharing a trained model: reading checkpoints safely, the export folders (``export`` writes them, ``formats``
reads them and every other model source), the model card and the Hugging Face hub.

Import the modules themselves (``masm_lightning.sharing.export``, ...): this package imports nothing.
"""
