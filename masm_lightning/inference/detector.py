"""Is this video (or image) fake? The Python API that ``detect``, the web app and other benchmarks share.

    from masm_lightning import Detector

    det = Detector.load("best.ckpt")            # a `fit` checkpoint or an `export` folder
    result = det.score("clip.mp4")              # a Result: score, decision, status, detail, per-frame records
    for result in det.score_many("videos/"):    # folders, lists; several videos in flight, results in input order
        ...
    p = det.predict("clip.mp4")                 # just the fake probability (DeepSafe's `predict(path) -> float`)

Faces are found and cropped exactly as for the training crops: the same frame sampling, MTCNN settings, tracking
and crop (``box``/``aligned``, size, margin, stored format), read from the checkpoint's ``face_crop`` record.

Memory stays bounded at any number of frames: a video is decoded, its faces detected, cropped and scored in
chunks of at most ``chunk_frames`` frames while a thread decodes the next chunk; only boxes and scores are kept
per frame. The face to crop in a frame depends on the whole video (the tracked face starts where it is largest),
so every confident face of a chunk is scored, and the tracked one's score is picked once the video is done: the
same crops and scores as holding every frame (docs/inference.md).

Inputs are recognised by their content, not their name (:func:`~masm_lightning.data.video.sniff`). Every input
gets a :class:`Result` whose ``status`` says what happened:

``ok``          scored
``truncated``   scored from what decodes of a file cut short: a video with fewer frames than its header
                promises, an image whose file ends inside its data (``detail`` says how much)
``damaged``     scored from the sampled frames that decode, some did not (``detail``: how many of how many)
``no_face``     no frame had a face of at least the checkpoint's ``min_prob`` confidence
``unreadable``  not a video or image that can be used (``detail`` says why, in one line: not media, empty, an
                image too large or truncated before any face); ``empty``: a video with no frame
``missing``     the path does not exist; ``no_media``: a folder with no video or image inside
``too_large``   the web app only: an upload over its size cap
``error``       anything else went wrong on this input (one line in ``detail``: a bug of ours, please report it)
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import nn

from ..adapters import merge_adapters
from ..data.crops import as_stored, crop_face
from ..data.faces import Detection, MTCNNDetector, select_faces
from ..data.indexers import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from ..data.settings import ExtractionSettings
from ..data.transforms import eval_transform
from ..data.video import Frame, chunks_ahead, open_image, open_video, sample_indices, sniff
from ..errors import InvalidInputError
from ..io import settings_digest, walk_files
from ..performance import compile_module, split_cores
from ..sharing.checkpoint import CheckpointError, check_device
from ..sharing.formats import load_model
from ..training.module import MASMDetector

__all__ = [
    "SCORED",
    "STATUSES",
    "Classifier",
    "ConfidentRule",
    "Detector",
    "DetectorOptions",
    "FrameScore",
    "Result",
    "aggregate",
    "expand_inputs",
    "load_classifier",
]

Aggregation = Literal["mean", "confident"]
# Every status an input can get, the one list (docs/troubleshooting.md's table): `too_large` is the web app's, for an
# upload over its size cap; the others are the detector's.
Status = Literal[
    "ok", "truncated", "damaged", "no_face", "unreadable", "empty", "missing", "no_media", "too_large", "error"
]
STATUSES: tuple[Status, ...] = get_args(Status)
Kind = Literal["video", "image", "folder", ""]
SCORED: tuple[Status, ...] = ("ok", "truncated", "damaged")  # statuses that carry a score and a decision
FaceDetector = Callable[[list[np.ndarray]], list[Detection]]
CHUNK_BYTES = 12 * 2**20  # decoded frames per chunk are capped at this size too (2 frames of 1080p, 8 of 480p)


@dataclass(frozen=True)
class ConfidentRule:
    """The DFDC winner's video score (Selim Seferbekov, ``confident_strategy`` in his DFDC solution).

    With ``p`` the frame fake probabilities of a video and ``n`` their number: if more than ``fake_share · n``
    frames are confidently fake (``p > fake_threshold``), the score is the mean of those frames; otherwise, if
    more than ``real_share · n`` frames are confidently real (``p < real_threshold``), the mean of those;
    otherwise the mean of all. A few confidently fake frames flag a video that is only partly manipulated, where a
    plain mean would dilute them. The original uses 0.8, 0.2, ``n // 2.5`` (≈ 0.4 n) and 0.9 n — the defaults
    here — plus an absolute "more than 11 confidently fake frames", which its 32 frames make redundant; we drop
    it so the rule scales with ``--frames`` (with 8 frames, 4 confident fakes suffice, where the original rule
    could never fire).
    """

    fake_threshold: float = 0.8
    real_threshold: float = 0.2
    fake_share: float = 0.4
    real_share: float = 0.9

    def __post_init__(self) -> None:
        if not 0 <= self.real_threshold < self.fake_threshold <= 1:
            raise InvalidInputError(
                f"confident rule: need 0 <= real_threshold < fake_threshold <= 1, got "
                f"{self.real_threshold} and {self.fake_threshold}"
            )
        for name in ("fake_share", "real_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise InvalidInputError(f"confident rule: {name} must be in [0, 1], got {getattr(self, name)}")


def aggregate(
    scores: Sequence[float] | np.ndarray, rule: Aggregation = "mean", confident: ConfidentRule = ConfidentRule()
) -> float:
    """A video's score from its frames' fake probabilities: ``mean``, or the ``confident`` rule."""
    p = np.asarray(scores, np.float64)
    if p.size == 0:
        raise ValueError("cannot aggregate an empty list of frame scores")
    if rule == "mean":
        return float(p.mean())
    if rule != "confident":
        raise ValueError(f"aggregation {rule!r} is not one of 'mean', 'confident'")
    fakes, reals = p[p > confident.fake_threshold], p[p < confident.real_threshold]
    if fakes.size > confident.fake_share * p.size:
        return float(fakes.mean())
    if reals.size > confident.real_share * p.size:
        return float(reals.mean())
    return float(p.mean())


@dataclass
class Classifier:
    """A face classifier ready to score RGB crops: the model, its input configuration, the crop settings it was
    trained on and its decision threshold."""

    model: nn.Module  # normalised images → (real, fake) logits
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    face_crop: ExtractionSettings
    threshold: float
    source: str
    device: torch.device
    interpolation: str = "bicubic"  # the backbone's resize, as in training

    def __post_init__(self) -> None:
        self.transform = eval_transform(self.image_size, self.mean, self.std, self.interpolation)

    @torch.inference_mode()
    def fake_probability(self, images: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """Fake probabilities of RGB uint8 images (any size: resized and normalised as in testing)."""
        out = []
        for start in range(0, len(images), batch_size):
            batch = torch.stack([self.transform(image=im)["image"] for im in images[start : start + batch_size]])
            out.append(self.model(batch.to(self.device)).float().softmax(-1)[:, 1].cpu())
        return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def load_classifier(source: str | Path, device: str | None = None, compile: bool = False) -> Classifier:
    """A :class:`Classifier` from a ``fit`` checkpoint, an ``export`` folder, an adapter folder (``export
    --adapter``: the base rebuilt and fingerprint-checked) or a hub id ``hf-hub:ORG/NAME``
    (:func:`~masm_lightning.sharing.formats.load_model`); a MASM model's adapters are merged for speed.

    Raises:
        CheckpointError: ``source`` is none of these (the message names it and says why).
        HubError: a hub id that cannot be downloaded and is not in the local cache.
    """
    target = check_device(device)
    loaded = load_model(source, target)
    if isinstance(loaded.model, MASMDetector):
        if loaded.model.backbone is None:
            raise CheckpointError(f"{str(source)!r}: the loaded model has no backbone")
        merge_adapters(loaded.model.backbone)  # plain Linear layers: the adapters cost nothing at inference
    inputs = loaded.input
    classifier = Classifier(
        loaded.model,
        inputs["image_size"],
        tuple(inputs["mean"]),
        tuple(inputs["std"]),
        loaded.face_crop,
        loaded.threshold,
        str(loaded.source),
        target,
        inputs["interpolation"],
    )
    compile_module(classifier.model, compile)  # in place; pays off over many inputs (docs/benchmarks.md)
    return classifier


@dataclass(frozen=True)
class FrameScore:
    """One scored face (or whole frame with ``face_crop=False``) of an input."""

    index: int  # frame index in display order (0 for an image)
    time: float | None  # seconds from the first frame (None for an image, or a video without timing)
    box: tuple[float, float, float, float] | None  # face box x0, y0, x1, y1 in frame pixels; None: whole frame
    score: float  # fake probability
    face: int = 0  # rank of the face in its frame (faces: all); 0 otherwise
    confidence: float | None = None  # MTCNN's face probability


@dataclass
class Result:
    """What :meth:`Detector.score` says about one input."""

    path: str
    kind: Kind
    status: Status
    score: float | None = None  # fake probability of the input (frame scores aggregated)
    decision: Literal["fake", "real"] | None = None  # score >= threshold
    detail: str = ""  # why it has no score, or what to know about it (truncated clip)
    frames: list[FrameScore] = field(default_factory=list)  # the scored faces, by frame index
    video_frames: int | None = None  # frames the video holds (decodable), for videos
    promised_frames: int | None = None  # frames its header announces (0: the container does not say)

    @property
    def scored(self) -> bool:
        """True when the input has a score and a decision (``ok``, ``truncated`` or ``damaged``)."""
        return self.status in SCORED

    def to_record(self, per_frame: bool = False) -> dict[str, Any]:
        """The row ``detect`` writes: path, kind, status, score, decision, frames, detail (+ frame indices and
        scores with ``per_frame``); empty strings where there is no value."""
        record: dict[str, Any] = {
            "path": self.path,
            "kind": self.kind,
            "status": self.status,
            "score": "" if self.score is None else round(self.score, 6),
            "decision": self.decision or "",
            "frames": len(self.frames),
            "detail": self.detail,
        }
        if per_frame:
            record["frame_indices"] = [f.index for f in self.frames]
            record["frame_scores"] = [round(f.score, 6) for f in self.frames]
        return record

    @classmethod
    def unscored(cls, path: str | Path, kind: Kind, status: Status) -> Result:
        """The result of an input that cannot be scored: ``missing`` or ``no_media`` (see :func:`expand_inputs`)."""
        detail = {"missing": "no such file", "no_media": "no video or image inside"}.get(status, "")
        return cls(str(path), kind, status, detail=detail)

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-able (the web app's HTTP API)."""
        return dataclasses.asdict(self)


def expand_inputs(paths: str | Path | Iterable[str | Path]) -> list[tuple[Path, Kind, Status | None]]:
    """(path, kind, status) per input: files as given, folders expanded recursively (sorted) to the files that
    are videos or images by content or by name; ``status`` is None for an input to score, else why it cannot be.

    A folder's files are kept when their first bytes say video or image, or, whatever their content, when their
    name does (a corrupt ``.mp4`` gets an ``unreadable`` record instead of vanishing).
    """
    if isinstance(paths, str | Path):
        paths = [paths]
    media = VIDEO_SUFFIXES + IMAGE_SUFFIXES
    found: list[tuple[Path, Kind, Status | None]] = []
    for path in map(Path, paths):
        if path.is_dir():
            files = []
            for file in walk_files(path):  # symlinked sub-folders followed, loops cut
                content = _sniff_or_none(file)
                if content in ("image", "video") or file.suffix.lower() in media:
                    kind: Kind = "image" if content == "image" else "video"
                    files.append((file, kind, None))
            found += files or [(path, "folder", "no_media")]
        elif not path.exists():
            found.append((path, "", "missing"))
        else:
            found.append((path, "image" if _sniff_or_none(path) == "image" else "video", None))
    return found


def _sniff_or_none(path: Path) -> str | None:
    try:
        return sniff(path)
    except OSError:
        return None


class _VideoScores:
    """A video's detections and face scores as its chunks are scored; only boxes and scores are kept."""

    def __init__(self, detector: Detector) -> None:
        self.owner = detector
        self.reset()

    def reset(self) -> None:
        self.frames: list[tuple[int, float | None]] = []  # (index, time) per frame seen
        self.detections: list[Detection] = []
        self.scores: list[dict[int, float]] = []  # per frame: face → fake probability (confident faces only)
        self.crops: list[np.ndarray] = []  # crops waiting for a full batch (small: a few MB)
        self.where: list[tuple[int, int]] = []  # their (frame position, face)

    def add(self, chunk: Sequence[Frame]) -> None:
        owner, classifier = self.owner, self.owner.classifier
        settings = classifier.face_crop
        images = [f.image for f in chunk]
        start = len(self.frames)
        self.frames += [(f.index, f.time) for f in chunk]
        self.scores += [{} for _ in chunk]
        if not owner.face_crop:
            self.detections += [(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)))] * len(chunk)
            self.crops += images
            self.where += [(start + k, 0) for k in range(len(chunk))]
        else:
            detections = owner.face_detector(images)
            for position, (image, (boxes, probs, points)) in enumerate(zip(images, detections), start):
                # Every face the selection may pick (tracking sees only confident ones): the pick waits for the end.
                for i in np.flatnonzero(probs >= settings.min_prob):
                    self.crops.append(as_stored(crop_face(image, boxes[i], points[i], settings), settings))
                    self.where.append((position, int(i)))
            self.detections += detections
        self.flush(full_batches_only=owner.face_crop)  # whole frames are not kept past their chunk

    def flush(self, full_batches_only: bool = False) -> None:
        """Score the waiting crops, in full batches (all of them at the end)."""
        batch = self.owner.batch_size
        count = len(self.crops) // batch * batch if full_batches_only else len(self.crops)
        if count == 0:
            return
        scores = self.owner.classifier.fake_probability(self.crops[:count], batch)
        for (position, face), score in zip(self.where[:count], scores):
            self.scores[position][face] = float(score)
        del self.crops[:count], self.where[:count]

    def finish(self) -> list[FrameScore]:
        self.flush()
        order = sorted(range(len(self.frames)), key=lambda k: self.frames[k][0])
        frames = [self.frames[k] for k in order]
        scores = [self.scores[k] for k in order]
        detections = [self.detections[k] for k in order]
        if not self.owner.face_crop:
            return [FrameScore(index, time, None, s[0]) for (index, time), s in zip(frames, scores)]
        records = []
        picks = select_faces(detections, self.owner.classifier.face_crop)
        for (index, time), (boxes, probs, _), faces, face_scores in zip(frames, detections, picks, scores):
            for rank, i in enumerate(faces):
                x0, y0, x1, y1 = (round(float(v), 2) for v in boxes[i])
                confidence = round(float(probs[i]), 4)
                records.append(FrameScore(index, time, (x0, y0, x1, y1), face_scores[i], rank, confidence))
        return records


@dataclass(frozen=True)
class DetectorOptions:
    """How a :class:`Detector` scores, in one typed object: ``detect``, the Python API, the web app and ``detect
    --explain`` all build their detector from one of these (``dataclasses.replace`` changes a few fields).

    Args:
        frames: frames per video, spread uniformly over the whole video (default: the checkpoint's extraction
            setting, 32). Any number: memory holds at most a few chunks of ``chunk_frames``.
        aggregation: a video's score: ``mean`` of its frames, or the DFDC winner's ``confident`` rule.
        confident: the confident rule's thresholds (:class:`ConfidentRule`).
        threshold: fake-probability decision threshold, in (0, 1) (default: the model's).
        batch_size: crops per forward pass.
        face_crop: crop faces as in training; false scores whole frames/images (no face detection).
        workers: inputs in flight at once in :meth:`Detector.score_many` (threads, each with a decoding thread of
            its own; about the number of cores).
        chunk_frames: decoded frames per chunk, the face detector's batch (also capped at 12 MB of frames):
            MTCNN's boxes do not depend on its batch, so neither do the scores; memory grows with it.
        compile: compile the model with ``torch.compile`` when it is loaded (:meth:`Detector.load`; pays off over
            many inputs, docs/benchmarks.md).

    Raises:
        InvalidInputError: a value out of range (one line naming it and what is valid).
    """

    frames: int | None = None
    aggregation: Aggregation = "mean"
    confident: ConfidentRule = ConfidentRule()
    threshold: float | None = None
    batch_size: int = 32
    face_crop: bool = True
    workers: int = 1
    chunk_frames: int = 8
    compile: bool = False

    def __post_init__(self) -> None:
        if self.aggregation not in ("mean", "confident"):
            raise InvalidInputError(f"aggregation {self.aggregation!r} is not one of 'mean', 'confident'")
        if self.threshold is not None and not 0 < self.threshold < 1:
            raise InvalidInputError(f"threshold must be in (0, 1), got {self.threshold}")
        counts = {"batch_size": self.batch_size, "workers": self.workers, "chunk_frames": self.chunk_frames}
        for name, value in {"frames": 1 if self.frames is None else self.frames, **counts}.items():
            if value < 1:
                raise InvalidInputError(f"{name} must be >= 1, got {value}")

    @classmethod
    def of(cls, options: DetectorOptions | None = None, **fields: Any) -> DetectorOptions:
        """``options`` (default: the defaults) with ``fields`` replaced: the keyword form the API also takes.

        Raises:
            InvalidInputError: a field that is not an option, or a value out of range.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise InvalidInputError(f"{unknown[0]!r} is not a detector option; the options: {', '.join(sorted(known))}")
        return dataclasses.replace(options or cls(), **fields)


class Detector:
    """Scores videos and images with a trained model: :meth:`load` it, then :meth:`score` or :meth:`score_many`.

    Args:
        classifier: the model and its settings (:func:`load_classifier`).
        options: how to score (:class:`DetectorOptions`); ``fields`` replace some of them
            (``Detector(classifier, frames=8)``).
        face_detector: frames → detections, in place of the checkpoint's MTCNN (tests, other detectors).
    """

    def __init__(
        self,
        classifier: Classifier,
        options: DetectorOptions | None = None,
        face_detector: FaceDetector | None = None,
        **fields: Any,
    ) -> None:
        options = DetectorOptions.of(options, **fields)
        self.classifier, self.options = classifier, options
        self.frames = options.frames or classifier.face_crop.frames
        self.aggregation, self.confident = options.aggregation, options.confident
        self.threshold = classifier.threshold if options.threshold is None else options.threshold
        self.batch_size, self.face_crop = options.batch_size, options.face_crop
        self.workers, self.chunk_frames = options.workers, options.chunk_frames
        self._face_detector = face_detector
        self._lock = threading.Lock()
        self._decode_threads = 0  # FFmpeg's choice for one video at a time; set per run of score_many

    @classmethod
    def load(
        cls,
        source: str | Path,
        device: str | None = None,
        options: DetectorOptions | None = None,
        face_detector: FaceDetector | None = None,
        **fields: Any,
    ) -> Detector:
        """A detector from a ``fit`` checkpoint, an ``export`` folder, an adapter folder or ``hf-hub:ORG/NAME``,
        scoring with ``options`` (``fields`` replace some of them; ``compile=True`` compiles the model);
        ``face_detector`` as the constructor takes it.

        Raises:
            CheckpointError: ``source`` is not a usable model (the message names it and says why).
            InvalidInputError: a bad option or device (a ``ValueError``).
        """
        options = DetectorOptions.of(options, **fields)  # before the model is read: a bad option costs nothing
        return cls(load_classifier(source, device, options.compile), options, face_detector)

    @property
    def face_detector(self) -> FaceDetector:
        """The face detector (the checkpoint's MTCNN settings), built on first use."""
        with self._lock:
            if self._face_detector is None:
                self._face_detector = MTCNNDetector.from_settings(
                    self.classifier.face_crop, str(self.classifier.device)
                )
            return self._face_detector

    @property
    def settings(self) -> dict[str, Any]:
        """Everything that changes the results (not the device, batch size or workers): for stamps."""
        return {
            "frames": self.frames,
            "aggregation": self.aggregation,
            "confident": dataclasses.asdict(self.confident) if self.aggregation == "confident" else None,
            "threshold": self.threshold,
            "face_crop": dataclasses.asdict(self.classifier.face_crop) if self.face_crop else False,
        }

    def fingerprint(self) -> str:
        """A digest of the model's files and of :attr:`settings`: equal digests, equal results."""
        source = Path(self.classifier.source)
        files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
        return settings_digest({"model": [_file_digest(p) for p in files], "settings": self.settings})

    def score(self, path: str | Path) -> Result:
        """Score one video or image (recognised by content). Never raises for a bad input: see ``status``."""
        path = Path(path)
        if path.is_dir():
            raise ValueError(f"{str(path)!r} is a folder: use score_many() for folders")
        if not path.exists():
            return Result.unscored(path, "", "missing")
        return self._score_file(path)

    def score_many(self, paths: str | Path | Iterable[str | Path]) -> Iterator[Result]:
        """Score files and folders (recursive), yielding one :class:`Result` per input in input order, as they
        finish; ``workers`` inputs in flight at once."""
        return self._run(expand_inputs(paths))

    def predict(self, path: str | Path) -> float:
        """The fake probability of one input (``predict(path) -> float``, as DeepSafe calls detectors).

        Raises:
            ValueError: the input could not be scored (the message says why).
        """
        result = self.score(path)
        if result.score is None:
            raise ValueError(f"{str(path)!r} could not be scored: {result.status} ({result.detail})")
        return result.score

    def _run(self, inputs: Sequence[tuple[Path, Kind, Status | None]]) -> Iterator[Result]:
        def one(item: tuple[Path, Kind, Status | None]) -> Result:
            path, kind, status = item
            if status is not None:
                return Result.unscored(path, kind, status)
            return self._score_file(path)

        if self.workers == 1 or len(inputs) <= 1:
            self._decode_threads = 0
            yield from map(one, inputs)
            return
        # Each thread scores whole inputs with an equal share of the cores (as preprocess does); at most
        # workers + 1 inputs are started ahead of the one being yielded.
        with split_cores(self.workers) as self._decode_threads:
            pending: list[Future[Result]] = []
            pool = ThreadPoolExecutor(self.workers, thread_name_prefix="detect")
            try:
                for item in inputs:
                    pending.append(pool.submit(one, item))
                    if len(pending) > self.workers:
                        yield pending.pop(0).result()
                while pending:
                    yield pending.pop(0).result()
            finally:  # also when the caller stops early: inputs not started are dropped
                pool.shutdown(wait=True, cancel_futures=True)

    def _score_file(self, path: Path) -> Result:
        try:
            if path.stat().st_size == 0:
                return Result(str(path), "", "unreadable", detail="an empty file (0 bytes)")
            kind = sniff(path)
            if kind == "image":
                return self._score_image(path)
            if kind == "text":
                return Result(str(path), "", "unreadable", detail="a text file, not a video or an image")
            return self._score_video(path, recognised=kind == "video")
        except Exception as error:  # one bad input must not stop the batch; its result says why, in one line
            text = " ".join(str(error).split())[:300]
            return Result(str(path), "", "error", detail=f"{type(error).__name__}: {text}")

    def _score_image(self, path: Path) -> Result:
        try:
            image = open_image(path)
        except OSError as error:
            return Result(str(path), "image", "unreadable", detail=str(error))
        state = _VideoScores(self)
        state.add([Frame(0, None, image.image)])
        result = self._result(path, "image", state.finish())
        if image.truncated:
            cut = "a truncated image (the file ends inside its image data)"
            if result.scored:
                result.status, result.detail = "truncated", f"{cut}: scored from the part that decodes"
            else:  # the face may be in the part that is missing: not "no face"
                result.status, result.detail = "unreadable", f"{cut}: no face in the part that decodes"
        return result

    def _score_video(self, path: Path, recognised: bool) -> Result:
        try:
            video = open_video(path, self._decode_threads)
        except OSError as error:
            reason = str(error).removeprefix(f"{path}: ")
            what = "a video file that does not decode" if recognised else "not a video or an image"
            return Result(str(path), "video" if recognised else "", "unreadable", detail=f"{what} ({reason})")
        if video.frames == 0:
            return Result(str(path), "video", "empty", detail="no frame could be read", promised_frames=video.promised)
        frame_bytes = max(1, video.width * video.height * 3)
        size = max(1, min(self.chunk_frames, CHUNK_BYTES // frame_bytes))
        state = _VideoScores(self)
        try:
            for chunk in chunks_ahead(video.frames_sampled(self.frames), size):
                if chunk is None:  # the decoder starts over (timestamps not in display order)
                    state.reset()
                else:
                    state.add(chunk)
                del chunk  # released before the next one is awaited
        except OSError as error:
            reason = str(error).removeprefix(f"{path}: ")
            return Result(str(path), "video", "unreadable", detail=f"decoding failed ({reason})")
        if not state.frames:
            return Result(str(path), "video", "empty", detail="no frame could be decoded", video_frames=video.frames)
        result = self._result(path, "video", state.finish(), seen=len(state.frames))
        result.video_frames, result.promised_frames = video.frames, video.promised
        sampled = len(sample_indices(video.frames, self.frames))
        notes = []
        if len(state.frames) < sampled:  # packets that would not decode: the frames are lost, the rest scored
            notes.append(f"damaged ({len(state.frames)} of {sampled} sampled frames decode)")
        if video.truncated:
            notes.append(f"truncated ({video.frames} of {video.promised} frames)")
        if notes and result.status == "ok":
            result.status = "damaged" if len(state.frames) < sampled else "truncated"
            result.detail = "; ".join(notes)
        elif notes:
            result.detail = "; ".join([result.detail, *notes])
        return result

    def _result(self, path: Path, kind: Kind, frames: list[FrameScore], seen: int = 1) -> Result:
        if not frames:
            minimum = self.classifier.face_crop.min_prob
            return Result(
                str(path),
                kind,
                "no_face",
                detail=f"no face of confidence >= {minimum} in {seen} frame{'s' * (seen != 1)}",
            )
        score = aggregate([f.score for f in frames], self.aggregation, self.confident)
        return Result(str(path), kind, "ok", score, "fake" if score >= self.threshold else "real", frames=frames)

    def __repr__(self) -> str:
        return (
            f"Detector({self.classifier.source!r}, frames={self.frames}, aggregation={self.aggregation!r}, "
            f"threshold={self.threshold}, device={str(self.classifier.device)!r})"
        )


def _file_digest(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(2**22):
            digest.update(block)
    return digest.hexdigest()
