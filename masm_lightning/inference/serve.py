"""``serve``: a local web app (Gradio) over the :class:`~masm_lightning.inference.detector.Detector` API, and an HTTP
JSON route.

Drop one or several videos or images: each gets its score and decision, a per-frame score timeline, its most
suspicious faces drawn in their frames with boxes coloured by score (green real → red fake), the explanation of
those faces (relevance heatmap and artifact-subspace responses, :mod:`masm_lightning.inference.explain`) and a row in
the results table, downloadable as CSV. Settings: frames per video, aggregation rule, decision threshold.

Robustness, for a page left open to colleagues:

- a bad upload (not a video or image by its content, no face, truncated, too large) gets a message in the page;
  nothing a file contains can stop the server;
- the size cap is checked on the bytes received, whatever the name says;
- uploads are processed ``concurrency`` at a time (Gradio's queue for the page, a semaphore shared with the HTTP
  route), so parallel uploads wait instead of exhausting memory;
- every uploaded file is deleted once scored, and the server's temporary folder when it stops.

``POST /api/score`` (multipart field ``file``; optional ``frames``, ``aggregation``, ``threshold``) returns the same
result as JSON (:func:`score_file`). Bound to 127.0.0.1 unless told otherwise: it is a local tool, without login.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import shutil
import signal
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# At module level: FastAPI resolves the route's (postponed) annotations from this module's globals. Installed with
# gradio (the `app` extra); this module is imported only by `serve`.
from fastapi import File, Form, UploadFile

from ..errors import InvalidInputError
from .detector import SCORED, Detector, Result, Status

__all__ = ["App", "build_api", "build_app", "form_values", "score_file", "serve_app", "timeline_figure"]

MESSAGES: dict[Status, str] = {  # why an unscored input has no score, for a person
    "no_face": "no face found",
    "unreadable": "not a video or image that can be read",
    "empty": "a video without readable frames",
    "missing": "the upload did not arrive",
    "too_large": "too large",
    "error": "could not be processed",
}
CSV_FIELDS = ("file", "status", "score", "decision", "frames", "message")


def _size(n: float) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.1f} KB"


def score_colour(score: float) -> tuple[int, int, int]:
    """RGB from green (0, real) through yellow to red (1, fake)."""
    score = float(np.clip(score, 0, 1))
    return (int(255 * min(1, 2 * score)), int(255 * min(1, 2 * (1 - score))), 0)


def message(name: str, result: dict[str, Any]) -> str:
    """One line for a person: the verdict, or why there is none."""
    if result["status"] in SCORED:
        extra = f" ({result['detail']})" if result.get("detail") else ""
        return f"{name}: {result['decision'].upper()} (score {result['score']:.4f}){extra}"
    why = MESSAGES.get(result["status"], result["status"])
    return f"{name}: not scored: {why}" + (f" ({result['detail']})" if result.get("detail") else "")


@dataclass
class App:
    """What the page and the HTTP route share: the loaded detector, an optional explainer, the limits."""

    detector: Detector
    explainer: Any = None  # masm_lightning.inference.explain.Explainer, or None (no explanations)
    max_bytes: int = 200 * 2**20
    concurrency: int = 1
    explain_faces: int = 3
    slots: threading.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.max_bytes < 1:
            raise ValueError(f"concurrency and the size cap must be >= 1, got {self.concurrency}, {self.max_bytes}")
        self.slots = threading.Semaphore(self.concurrency)

    def configured(self, frames: int | None, aggregation: str | None, threshold: float | None) -> Detector:
        """The detector with the page's settings; the model and face detector are shared, not reloaded."""
        base = self.detector
        options = dataclasses.replace(
            base.options,
            frames=base.frames if frames is None else frames,
            aggregation=aggregation or base.aggregation,  # type: ignore[arg-type]  # DetectorOptions checks it
            threshold=base.threshold if threshold is None else threshold,
        )  # every other option (workers, chunk size, …) as the app was started with
        return Detector(base.classifier, options, base.face_detector if base.face_crop else None)


def score_file(
    app: App,
    path: str | Path,
    name: str | None = None,
    frames: int | None = None,
    aggregation: str | None = None,
    threshold: float | None = None,
    explain: bool = False,
) -> tuple[dict[str, Any], Result | None, list[Any]]:
    """Score one uploaded file within the app's limits and delete it afterwards.

    Returns:
        The JSON result (:meth:`Result.to_dict` plus ``name``, ``threshold`` and ``message``), the :class:`Result`
        (None when refused before scoring) and the explained faces (empty unless ``explain``).
    """
    path = Path(path)
    name = name or path.name
    faces: list[Any] = []
    try:
        size = path.stat().st_size if path.is_file() else -1
        if size < 0:
            record: dict[str, Any] = {"path": name, "kind": "", "status": "missing", "score": None, "frames": []}
            return record | {"name": name, "message": message(name, record)}, None, faces
        if size > app.max_bytes:
            record = {
                "path": name,
                "kind": "",
                "status": "too_large",
                "score": None,
                "decision": None,
                "detail": f"{_size(size)}, the limit is {_size(app.max_bytes)}",
                "frames": [],
            }
            return record | {"name": name, "message": message(name, record)}, None, faces
        detector = app.configured(frames, aggregation, threshold)
        with app.slots:  # at most `concurrency` inputs decoded and scored at once, page and API together
            result = detector.score(path)
            if explain and app.explainer is not None and result.scored:
                try:
                    faces = app.explainer.explain_result(detector, result, app.explain_faces)
                except Exception:  # an explanation must never cost the verdict
                    faces = []
        record = result.to_dict() | {"path": name, "threshold": detector.threshold}
        return record | {"name": name, "message": message(name, record)}, result, faces
    finally:
        path.unlink(missing_ok=True)  # the upload is not kept


def timeline_figure(records: list[dict[str, Any]]) -> Any:
    """Matplotlib figure: the fake probability of every scored frame over time (or frame index), one line per
    scored input (labelled by its name), with the decision threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.2 + 0.15 * max(len(records) - 1, 0)), dpi=100)
    use_time = all(f["time"] is not None for record in records for f in record["frames"])
    for record in records:
        frames = record["frames"]
        x = [f["time"] if use_time else f["index"] for f in frames]
        ax.plot(x, [f["score"] for f in frames], "o-", ms=3, label=record["name"])
    ax.axhline(records[0].get("threshold", 0.5) if records else 0.5, color="grey", ls="--", lw=1, label="threshold")
    ax.set_ylim(0, 1)
    ax.set_xlabel("time (s)" if use_time else "frame")
    ax.set_ylabel("p(fake)")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def _boxed_frames(faces: list[Any]) -> list[tuple[np.ndarray, str]]:
    import cv2

    out = []
    for face in faces:
        if face.image is None:
            continue
        image = face.image.copy()
        if face.box is not None:
            x0, y0, x1, y1 = (round(v) for v in face.box)
            width = max(2, image.shape[1] // 200)
            cv2.rectangle(image, (x0, y0), (x1, y1), score_colour(face.score), width)
        out.append((image, f"frame {face.frame}: p(fake) {face.score:.3f}"))
    return out


def _explained(faces: list[Any]) -> list[tuple[np.ndarray, str]]:
    from .explain import overlay, response_chart

    out = []
    for face in faces:
        side = np.concatenate([face.crop, overlay(face.crop, face.explanation.heatmap)], axis=1)
        out.append((side, f"frame {face.frame}: relevance (red: drove the score toward fake)"))
        if face.explanation.responses:
            fig = response_chart(face.explanation)
            fig.canvas.draw()
            chart = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
            import matplotlib.pyplot as plt

            plt.close(fig)
            out.append((chart, f"frame {face.frame}: artifact-subspace responses"))
    return out


def _face_rows(record: dict[str, Any]) -> list[list[Any]]:
    return [
        [
            record["name"],
            f["index"],
            "" if f["time"] is None else round(f["time"], 3),
            round(f["score"], 4),
            "" if f["box"] is None else ", ".join(f"{v:.0f}" for v in f["box"]),
        ]
        for f in record["frames"]
    ]


def build_app(app: App, csv_dir: str | Path) -> Any:
    """The Gradio page (Blocks) over ``app``; CSV files of the results table are written in ``csv_dir``."""
    import gradio as gr

    detector = app.detector

    def run(
        files: list[str] | None, frames: float, aggregation: str, threshold: float
    ) -> tuple[str, Any, list[list[Any]], list[Any], list[Any], list[list[Any]], str | None]:
        if not files:
            return "Upload one or more videos or images.", None, [], [], [], [], None
        lines, table, faces_table, boxed, explained, scored = [], [], [], [], [], []
        for upload in files:
            path = Path(upload)
            name = path.name
            record, _, faces = score_file(app, path, name, int(frames), aggregation, float(threshold), explain=True)
            lines.append(message(name, record))
            score = record.get("score")
            table.append(
                [
                    name,
                    record["status"],
                    "" if score is None else round(score, 4),
                    record.get("decision") or "",
                    len(record["frames"]),
                    record["message"],
                ]
            )
            if record["status"] in SCORED:
                faces_table += _face_rows(record)
                scored.append(record)
                boxed += _boxed_frames(faces)
                explained += _explained(faces)
        fd, csv_path = tempfile.mkstemp(suffix=".csv", prefix="masm_results_", dir=csv_dir)
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(CSV_FIELDS)
            writer.writerows(table)
        timeline = timeline_figure(scored) if scored else None  # every scored input, one line each
        return "\n\n".join(lines), timeline, faces_table, boxed, explained, table, csv_path

    with gr.Blocks(title="MASM deepfake detector", delete_cache=(600, 3600)) as page:
        gr.Markdown(
            "# Is this face real?\n"
            f"Model `{Path(detector.classifier.source).name}`. Drop videos or images; each face is scored "
            "(fake probability), and the frames' scores are aggregated per file. A score is evidence, not proof."
        )
        with gr.Row():
            files = gr.File(label="videos or images", file_count="multiple", elem_id="uploads")
            with gr.Column():
                frames = gr.Slider(1, 128, value=detector.frames, step=1, label="frames per video")
                aggregation = gr.Dropdown(["mean", "confident"], value=detector.aggregation, label="aggregation")
                threshold = gr.Slider(0.01, 0.99, value=detector.threshold, step=0.01, label="decision threshold")
                button = gr.Button("Score", variant="primary", elem_id="score")
        verdict = gr.Markdown(elem_id="verdict")
        timeline = gr.Plot(label="per-frame score timeline (one line per scored file)", elem_id="timeline")
        results = gr.Dataframe(
            headers=list(CSV_FIELDS), label="results", elem_id="results", interactive=False, wrap=True
        )
        download = gr.File(label="results as CSV", elem_id="csv")
        faces_table = gr.Dataframe(
            headers=["file", "frame", "time (s)", "p(fake)", "box x0, y0, x1, y1"],
            label="faces",
            elem_id="faces",
            interactive=False,
        )

        # Whole images ("contain"), never cropped to square tiles: a crop | heatmap pair and the subspace chart
        # are only readable in full.
        def gallery(label: str, elem_id: str) -> Any:
            return gr.Gallery(label=label, elem_id=elem_id, columns=2, object_fit="contain", height="auto")

        boxed = gallery("most suspicious faces (box colour: green real → red fake)", "boxes")
        explained = gallery("explanations: relevance heatmaps and subspace responses", "explain")
        button.click(
            run,
            inputs=[files, frames, aggregation, threshold],
            outputs=[verdict, timeline, faces_table, boxed, explained, results, download],
            concurrency_limit=app.concurrency,
        )
    return page.queue(max_size=32, default_concurrency_limit=app.concurrency)


def form_values(
    frames: str | None, aggregation: str | None, threshold: str | None
) -> tuple[int | None, str | None, float | None]:
    """The HTTP route's form values, checked: (frames, aggregation, threshold), None where not given.

    Raises:
        InvalidInputError: a value the detector would not take (one line naming it and what is valid).
    """
    count = number = None
    if frames not in (None, ""):
        try:
            count = int(frames)
        except ValueError:
            raise InvalidInputError(f"frames must be a whole number >= 1, got {frames!r}") from None
        if count < 1:
            raise InvalidInputError(f"frames must be >= 1, got {count}")
    if aggregation not in (None, "", "mean", "confident"):
        raise InvalidInputError(f"aggregation must be 'mean' or 'confident', got {aggregation!r}")
    if threshold not in (None, ""):
        try:
            number = float(threshold)
        except ValueError:
            number = float("nan")
        if not 0 < number < 1:  # NaN too
            raise InvalidInputError(f"threshold must be a number in (0, 1), got {threshold!r}")
    return count, aggregation or None, number


def build_api(app: App, temp: str | Path) -> Any:
    """The FastAPI app holding ``POST /api/score`` (uploads are written in ``temp`` and deleted once scored).

    Answers: 200 with the result (whatever the file holds: its ``status`` says what happened); 413 for an upload
    over the size cap; 422 with ``{"error": <one line>}`` for an invalid form value or an empty upload.
    """
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    api = FastAPI(title="MASM deepfake detector")
    temp = Path(temp)

    @api.post("/api/score")
    def score_route(
        file: UploadFile = File(...),  # noqa: B008 - FastAPI's declaration style
        frames: str | None = Form(None),
        aggregation: str | None = Form(None),
        threshold: str | None = Form(None),
    ) -> JSONResponse:
        # Strings, checked here: FastAPI's own validation answers with a nested list, ours with one line.
        try:
            settings = form_values(frames, aggregation, threshold)
        except InvalidInputError as error:
            return JSONResponse({"error": str(error)}, 422)
        name = Path(file.filename or "upload").name
        fd, target = tempfile.mkstemp(dir=temp, suffix="_" + name)
        written = 0
        with os.fdopen(fd, "wb") as out:
            while block := file.file.read(2**20):
                written += len(block)
                if written > app.max_bytes:  # stop reading: the cap holds on bytes received
                    break
                out.write(block)
        if written == 0 or written > app.max_bytes:
            Path(target).unlink(missing_ok=True)
        if written == 0:
            return JSONResponse({"error": f"the upload {name!r} is empty (0 bytes): send the file's content"}, 422)
        if written > app.max_bytes:
            record: dict[str, Any] = {"path": name, "status": "too_large", "score": None, "frames": [], "detail": ""}
            record["detail"] = f"more than {_size(app.max_bytes)}"
            return JSONResponse(record | {"name": name, "message": message(name, record)}, status_code=413)
        record, _, _ = score_file(app, target, name, *settings)
        return JSONResponse(record)

    return api


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def serve_app(app: App, host: str = "127.0.0.1", port: int = 7860) -> None:
    """Run the page and ``POST /api/score`` on ``host:port`` until interrupted (Ctrl-C, or SIGTERM as ``kill``,
    ``docker stop`` and systemd send it); uploads and other temporary files are removed either way."""
    # uvicorn shuts down gracefully on SIGTERM, then raises it again under the handler it found: Python's default
    # ends the process on the spot, and the uploads it holds would stay on disk. This handler unwinds instead.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if main_thread else None
    temp = Path(tempfile.mkdtemp(prefix="masm_serve_"))
    try:  # from here on, however it ends (a failed build of the app too), the folder goes and the handler returns
        os.environ["GRADIO_TEMP_DIR"] = str(temp)  # uploads land here (and are deleted once scored)
        import gradio as gr
        import uvicorn

        api = build_api(app, temp)
        page = build_app(app, temp)
        mounted = gr.mount_gradio_app(api, page, path="/", max_file_size=app.max_bytes)
        print(f"MASM web app: open http://{host}:{port}/ (HTTP API: POST http://{host}:{port}/api/score)", flush=True)
        uvicorn.run(mounted, host=host, port=port, log_level="warning")
    finally:
        shutil.rmtree(temp, ignore_errors=True)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
