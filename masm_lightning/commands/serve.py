"""``serve``: the local web app over a trained model (Gradio page + ``POST /api/score``)."""

from __future__ import annotations

__all__ = ["serve"]


def serve(
    ckpt: str,
    host: str = "127.0.0.1",
    port: int = 7860,
    device: str | None = None,
    frames: int | None = None,
    max_upload_mb: float = 200.0,
    concurrency: int = 1,
    explain: bool = True,
) -> None:
    """Open a local web app: drop videos or images, get scores, timelines, faces and explanations.

    Args:
        ckpt: a checkpoint written by `fit`, an `export` folder, an adapter folder or hf-hub:ORG/NAME.
        host: address to bind; 127.0.0.1 (default) serves this machine only (the app has no login).
        port: port to listen on.
        device: cpu or cuda (default: cuda when available).
        frames: default frames per video (default: the checkpoint's extraction setting).
        max_upload_mb: uploads larger than this (bytes received, whatever the name) are refused.
        concurrency: uploads processed at once; the others wait in the queue.
        explain: compute relevance heatmaps and subspace responses for the most suspicious faces.
    """
    from ..inference.detector import Detector
    from ..inference.serve import App, serve_app
    from ..performance import return_freed_memory

    if not 0 < port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {port}")
    if max_upload_mb <= 0:
        raise ValueError(f"--max_upload_mb must be > 0, got {max_upload_mb}")
    return_freed_memory()  # a long-running server: freed upload buffers go back to the system
    detector = Detector.load(ckpt, device, frames=frames)
    explainer = None
    if explain:
        from ..inference.explain import Explainer

        explainer = Explainer.load(detector.classifier.source, detector.classifier.device)
    app = App(detector, explainer, max_bytes=int(max_upload_mb * 2**20), concurrency=concurrency)
    serve_app(app, host, port)
