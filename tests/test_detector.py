"""The Python ``Detector`` API and the streaming, resumable, shardable ``detect`` behind it."""

from __future__ import annotations

import csv
import json
import weakref
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from masm_lightning.data.video import sample_indices, sniff
from masm_lightning.inference.detector import Detector
from masm_lightning.inference.runs import detect, shard_inputs
from tests.helpers import ROOT

SHARED = ROOT.parent / "shared" / "data"
CLIP = SHARED / "FaceForensics++/original_sequences/youtube/c23/videos/519.mp4"
needs_shared = pytest.mark.skipif(not CLIP.is_file(), reason=f"real FF++ sample clip not found at {CLIP}")


def _encode(path: Path, frames: int = 40, size: tuple[int, int] = (64, 48), front_index: bool = True) -> Path:
    """A clip encoded with PyAV; ``front_index``: the MP4 index (moov) before the frames, as streamed files have
    it, so a cut file still says how many frames it should hold."""
    rng = np.random.default_rng(0)
    options = {"movflags": "faststart"} if front_index else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            image = np.full((size[1], size[0], 3), 8 * i % 256, np.uint8) + rng.integers(0, 30, (size[1], size[0], 3))
            for packet in stream.encode(av.VideoFrame.from_ndarray(image.astype(np.uint8), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _images(folder: Path, names: list[str]) -> list[Path]:
    rng = np.random.default_rng(1)
    paths = []
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / name), rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
        paths.append(folder / name)
    return paths


@needs_shared
def test_score_gives_a_typed_result_with_per_frame_records_and_predict_agrees(tiny_checkpoint):
    det = Detector.load(tiny_checkpoint, "cpu", frames=2)
    result = det.score(CLIP)
    assert result.status == "ok" and result.kind == "video" and result.scored
    assert [f.index for f in result.frames] == sample_indices(751, 2), "the frames spread over the whole clip"
    assert [f.time for f in result.frames] == pytest.approx([i / 25 for i in sample_indices(751, 2)])
    for frame in result.frames:
        x0, y0, x1, y1 = frame.box
        assert 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 480 and frame.confidence >= 0.9
    assert result.score == pytest.approx(np.mean([f.score for f in result.frames]))
    assert result.decision == ("fake" if result.score >= det.threshold else "real")
    assert det.predict(CLIP) == pytest.approx(result.score, abs=1e-6)
    record = detect([CLIP], tiny_checkpoint, frames=2, device="cpu")[0]
    assert record["score"] == pytest.approx(result.score, abs=1e-6), "detect is the same detector"
    json.dumps(result.to_dict())  # the web app's JSON


def test_inputs_are_recognised_by_content_not_by_name(tmp_path, tiny_checkpoint):
    png = _images(tmp_path, ["picture.png"])[0].rename(tmp_path / "picture.mp4")
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n")
    hidden = _images(tmp_path / "folder", ["frame.png"])[0].rename(tmp_path / "folder" / "frame.dat")  # by content
    assert (sniff(png), sniff(text), sniff(hidden)) == ("image", "text", "image")
    det = Detector.load(tiny_checkpoint, "cpu", face_crop=False)
    as_image = det.score(png)
    assert (as_image.kind, as_image.status, len(as_image.frames)) == ("image", "ok", 1)
    not_media = det.score(text)
    assert not_media.status == "unreadable" and "text file, not a video or an image" in not_media.detail
    found = list(det.score_many(tmp_path / "folder"))
    assert [(Path(r.path).name, r.kind, r.status) for r in found] == [("frame.dat", "image", "ok")]
    with pytest.raises(ValueError, match="could not be scored: unreadable"):
        det.predict(text)


def test_a_truncated_clip_is_scored_from_what_decodes_and_flagged(tmp_path, tiny_checkpoint):
    clip = _encode(tmp_path / "clip.mp4", frames=40)
    cut = tmp_path / "cut.mp4"
    data = clip.read_bytes()
    cut.write_bytes(data[: len(data) * 6 // 10])
    det = Detector.load(tiny_checkpoint, "cpu", face_crop=False, frames=8)
    whole, truncated = det.score(clip), det.score(cut)
    assert whole.status == "ok" and whole.detail == "" and whole.video_frames == 40
    assert truncated.status == "truncated" and truncated.scored and truncated.score is not None
    n = truncated.video_frames
    assert n is not None and 0 < n < 40 and truncated.detail == f"truncated ({n} of 40 frames)"
    assert max(f.index for f in truncated.frames) < n, "sampled over the frames that exist"


def test_frames_held_at_once_are_bounded_by_the_chunk_whatever_the_frame_count(tmp_path, tiny_checkpoint):
    clip = _encode(tmp_path / "long.mp4", frames=60)
    seen: list[weakref.ref] = []
    batches, most_alive = [], 0

    def face_detector(frames: list[np.ndarray]) -> list:
        nonlocal most_alive
        batches.append(len(frames))
        seen.extend(weakref.ref(f) for f in frames)
        most_alive = max(most_alive, sum(ref() is not None for ref in seen))
        box = np.array([[16, 12, 48, 36]], np.float32)
        points = np.array([[[26, 20], [38, 20], [32, 25], [27, 30], [37, 30]]], np.float32)
        return [(box, np.array([0.99], np.float32), points) for _ in frames]

    det = Detector.load(tiny_checkpoint, "cpu", frames=50, chunk_frames=4, face_detector=face_detector)
    result = det.score(clip)
    assert result.status == "ok" and len(result.frames) == 50
    assert sum(batches) == 50 and max(batches) == 4
    assert most_alive <= 2 * 4, f"{most_alive} frames alive at once with chunks of 4"


def test_detect_resumes_skipping_inputs_already_scored_with_the_same_model_and_settings(
    tmp_path, tiny_checkpoint, monkeypatch
):
    inputs = _images(tmp_path / "in", ["a.png", "b.png", "c.png"])
    out = tmp_path / "results.csv"
    first = detect(inputs, tiny_checkpoint, out=out, device="cpu", face_crop=False)
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:-1]) + lines[-1][:10])  # killed while writing the last row
    scored: list[str] = []
    score_file = Detector._score_file
    monkeypatch.setattr(Detector, "_score_file", lambda self, path: scored.append(path.name) or score_file(self, path))
    again = detect(inputs, tiny_checkpoint, out=out, device="cpu", face_crop=False)
    assert scored == ["c.png"], "only the input without a complete row is scored again"
    assert again == first
    with out.open(newline="") as f:
        assert [Path(r["path"]).name for r in csv.DictReader(f)] == ["a.png", "b.png", "c.png"]
    scored.clear()
    detect(inputs, tiny_checkpoint, out=out, device="cpu", face_crop=False, threshold=0.3)
    assert scored == ["a.png", "b.png", "c.png"], "other settings: everything is scored again"


def test_shards_partition_the_sorted_inputs_into_their_own_files(tmp_path, tiny_checkpoint):
    names = [f"clip{i}.mp4" for i in (3, 1, 4, 0, 2)]
    shards = [shard_inputs(names, i, 2) for i in range(2)]
    assert shards == [["clip0.mp4", "clip2.mp4", "clip4.mp4"], ["clip1.mp4", "clip3.mp4"]]
    assert shard_inputs(sorted(names), 1, 2) == shards[1], "the partition does not depend on the input order"
    with pytest.raises(ValueError, match="--shard must be in"):
        shard_inputs(names, 2, 2)
    folder = tmp_path / "in"
    _images(folder, ["a.png", "b.png", "c.png"])
    for shard in range(2):
        detect(
            [folder], tiny_checkpoint, out=tmp_path / "r.json", device="cpu", face_crop=False, shard=shard, num_shards=2
        )
    parts = [json.loads((tmp_path / f"r.shard{i}-of-2.json").read_text()) for i in range(2)]
    assert sorted(Path(r["path"]).name for part in parts for r in part) == ["a.png", "b.png", "c.png"]
    assert [len(part) for part in parts] == [2, 1]


@pytest.mark.slow
@pytest.mark.background("fresh_imports")
def test_importing_the_package_does_not_load_the_detector_until_it_is_used(fresh_imports):
    loaded = fresh_imports("masm_lightning:Detector")
    assert ("av" in loaded["import"], "av" in loaded["attribute"]) == (False, True)


def test_several_workers_give_the_same_results_in_input_order(tmp_path, tiny_checkpoint):
    inputs = [*_images(tmp_path, ["c.png", "a.png", "b.png", "d.png"]), tmp_path / "absent.png"]
    one = list(Detector.load(tiny_checkpoint, "cpu", face_crop=False).score_many(inputs))
    three = list(Detector.load(tiny_checkpoint, "cpu", face_crop=False, workers=3).score_many(inputs))
    assert [r.path for r in three] == [str(p) for p in inputs]
    assert [(r.status, r.score) for r in three] == [(r.status, r.score) for r in one]
    assert three[-1].status == "missing"


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("frames", 0, "frames must be >= 1, got 0"),
        ("workers", 0, "workers must be >= 1, got 0"),
        ("threshold", 1.5, r"threshold must be in \(0, 1\), got 1.5"),
        ("aggregation", "median", "aggregation 'median' is not one of 'mean', 'confident'"),
    ],
)
def test_a_bad_option_is_one_message_naming_it(tiny_checkpoint, option, value, message):
    with pytest.raises(ValueError, match=message):
        Detector.load(tiny_checkpoint, "cpu", **{option: value})


def _huge_png(path: Path, side: int = 50_000) -> Path:
    """A PNG whose header says side × side pixels (a few hundred bytes: a decompression bomb's shape)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 999)) + chunk(b"IEND", b"")
    )
    return path


def _no_faces(frames: list[np.ndarray]) -> list:
    return [(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))) for _ in frames]


def test_a_clip_with_damaged_middle_bytes_is_scored_from_what_decodes_and_flagged(tmp_path, tiny_checkpoint):
    data = bytearray(_encode(tmp_path / "clip.mp4", frames=40).read_bytes())
    start, end = len(data) * 3 // 10, len(data) * 7 // 10  # 40% of the middle bytes randomised
    data[start:end] = np.random.default_rng(0).integers(0, 256, end - start, dtype=np.uint8).tobytes()
    (tmp_path / "damaged.mp4").write_bytes(bytes(data))
    result = Detector.load(tiny_checkpoint, "cpu", face_crop=False, frames=8).score(tmp_path / "damaged.mp4")
    assert result.status == "damaged" and result.scored and result.score is not None
    assert result.detail == f"damaged ({len(result.frames)} of 8 sampled frames decode)" and len(result.frames) < 8


def test_damaged_images_are_reported_in_one_line_never_as_no_face(tmp_path, tiny_checkpoint, capfd):
    rng = np.random.default_rng(0)
    cv2.imwrite(str(tmp_path / "whole.jpg"), rng.integers(0, 256, (200, 200, 3), dtype=np.uint8))
    cv2.imwrite(str(tmp_path / "whole.png"), rng.integers(0, 256, (200, 200, 3), dtype=np.uint8))
    for name in ("whole.jpg", "whole.png"):
        data = (tmp_path / name).read_bytes()
        (tmp_path / name.replace("whole", "cut")).write_bytes(data[: len(data) // 2])
    _huge_png(tmp_path / "huge.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    whole_frames = Detector.load(tiny_checkpoint, "cpu", face_crop=False)
    no_face = Detector(whole_frames.classifier, face_detector=_no_faces)
    cut_jpeg = whole_frames.score(tmp_path / "cut.jpg")
    assert cut_jpeg.status == "truncated" and cut_jpeg.scored
    assert "truncated image" in cut_jpeg.detail and "scored from the part that decodes" in cut_jpeg.detail
    faceless = no_face.score(tmp_path / "cut.jpg")
    assert faceless.status == "unreadable" and "no face in the part that decodes" in faceless.detail
    assert whole_frames.score(tmp_path / "cut.png").detail.startswith("a truncated PNG")
    huge = whole_frames.score(tmp_path / "huge.png")
    assert (huge.status, huge.detail) == (
        "unreadable",
        "an image of 50000×50000 pixels, larger than the limit of 134 megapixels",
    )
    assert whole_frames.score(tmp_path / "empty.jpg").detail == "an empty file (0 bytes)"
    assert whole_frames.score(tmp_path / "whole.jpg").status == "ok"
    records = detect(sorted(tmp_path.iterdir()), tiny_checkpoint, face_crop=False, device="cpu", out=tmp_path / "r.csv")
    with (tmp_path / "r.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(records) == 6 and all("\n" not in row["detail"] for row in rows)
    assert "JPEG" not in capfd.readouterr().err, "libjpeg's own warning stays off stderr"


def test_the_options_are_one_typed_object_checked_before_the_model_is_read(tmp_path):
    from masm_lightning.errors import InvalidInputError
    from masm_lightning.inference.detector import DetectorOptions

    assert DetectorOptions.of(DetectorOptions(workers=2), frames=8) == DetectorOptions(frames=8, workers=2)
    with pytest.raises(InvalidInputError, match="'frame' is not a detector option; the options: aggregation, "):
        DetectorOptions.of(frame=8)
    with pytest.raises(InvalidInputError, match="chunk_frames must be >= 1, got 0"):
        Detector.load(tmp_path / "no.ckpt", "cpu", chunk_frames=0)  # the option, not the missing checkpoint


def _one_face(frames: list[np.ndarray]) -> list:
    """A face detector that finds one confident face in the middle of every frame."""
    out = []
    for frame in frames:
        h, w = frame.shape[:2]
        box = np.array([[w / 4, h / 4, 3 * w / 4, 3 * h / 4]], np.float32)
        points = np.tile(np.array([[w / 2, h / 2]], np.float32), (1, 5, 1))
        out.append((box, np.ones(1, np.float32), points))
    return out


def test_the_crop_as_training_stored_it_is_one_behaviour_for_scores_and_explanations(
    tmp_path, tiny_checkpoint, monkeypatch
):
    """Crops stored as JPEG are scored and explained after the same JPEG round trip; where it fails, both say so
    (the explanation used to fall back silently to the crop the model was never trained on)."""
    import dataclasses

    from masm_lightning.data.crops import as_stored
    from masm_lightning.inference.explain import Explainer

    rng = np.random.default_rng(0)
    crop = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    loaded = Detector.load(tiny_checkpoint, "cpu", face_detector=_one_face)
    jpg = dataclasses.replace(loaded.classifier.face_crop, image_format="jpg", jpeg_quality=75)
    png = dataclasses.replace(jpg, image_format="png")
    assert as_stored(crop, png) is crop
    _, data = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 75])
    np.testing.assert_array_equal(as_stored(crop, jpg), cv2.cvtColor(cv2.imdecode(data, 1), cv2.COLOR_BGR2RGB))

    detector = Detector(dataclasses.replace(loaded.classifier, face_crop=jpg), face_detector=_one_face)
    image = tmp_path / "face.png"
    cv2.imwrite(str(image), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    result = detector.score(image)
    assert result.status == "ok"
    monkeypatch.setattr(cv2, "imencode", lambda *args: (False, None))
    failed = detector.score(image)
    assert failed.status == "error" and "JPEG round trip at quality 75 failed" in failed.detail
    with pytest.raises(OSError, match="JPEG round trip at quality 75 failed"):
        Explainer.load(tiny_checkpoint).explain_result(detector, result, faces=1)


def test_the_documented_statuses_are_the_ones_the_code_gives():
    import re

    from masm_lightning.inference.detector import SCORED, STATUSES

    text = (ROOT / "docs" / "troubleshooting.md").read_text()
    table = text.split("## `detect` and web app statuses", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `(\w+)` \| (yes|no) \|", table, re.MULTILINE)
    assert [status for status, _ in documented] == list(STATUSES)
    assert [status for status, scored in documented if scored == "yes"] == list(SCORED)
