"""``detect`` on the real FF++ clips of ../shared/data and on generated bad inputs, driven like a user would."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from masm_lightning.cli import main
from masm_lightning.inference.runs import ConfidentRule, aggregate, detect

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
FFPP = SHARED / "FaceForensics++"
CLIPS = [
    FFPP / "original_sequences/youtube/c23/videos/519.mp4",
    FFPP / "manipulated_sequences/Deepfakes/c23/videos/519_515.mp4",
]
needs_shared = pytest.mark.skipif(
    not all(p.is_file() for p in CLIPS), reason=f"real FF++ sample clips not found under {FFPP}"
)


def _faceless_video(path: Path, frames: int = 12) -> Path:
    """A short clip of smooth colour gradients: decodable, but nothing face-like for MTCNN."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (160, 120))
    ramp = np.linspace(0, 255, 160, dtype=np.uint8)
    for i in range(frames):
        frame = np.stack(
            [np.tile(ramp, (120, 1)), np.full((120, 160), 20 * i % 255, np.uint8), np.tile(ramp[::-1], (120, 1))],
            axis=-1,
        )
        writer.write(frame)
    writer.release()
    return path


def _corrupt_video(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return path


@needs_shared
def test_detect_scores_every_clip_and_reports_bad_inputs_without_stopping(tmp_path, tiny_checkpoint, capsys):
    faceless = _faceless_video(tmp_path / "faceless.mp4")
    corrupt = _corrupt_video(tmp_path / "corrupt.mp4")
    out = tmp_path / "results.json"
    main(
        [
            "detect",
            str(CLIPS[0]),
            str(corrupt),
            str(faceless),
            str(CLIPS[1]),
            str(tmp_path / "absent.mp4"),
            "--ckpt",
            str(tiny_checkpoint),
            "--frames",
            "2",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--per_frame",
            "true",
        ]
    )
    records = {Path(r["path"]).name: r for r in json.loads(out.read_text())}
    assert [Path(r["path"]).name for r in json.loads(out.read_text())] == [
        "519.mp4",
        "corrupt.mp4",
        "faceless.mp4",
        "519_515.mp4",
        "absent.mp4",
    ], "one record per input, in order"
    for clip in CLIPS:
        record = records[clip.name]
        assert record["status"] == "ok" and record["kind"] == "video"
        assert 0 <= record["score"] <= 1 and record["frames"] == 2
        assert record["decision"] == ("fake" if record["score"] >= 0.5 else "real")
        assert len(record["frame_scores"]) == 2 and np.isclose(
            np.mean(record["frame_scores"]), record["score"], atol=1e-5
        )
    assert records["corrupt.mp4"]["status"] == "unreadable"
    assert records["faceless.mp4"]["status"] == "no_face"
    assert records["absent.mp4"]["status"] == "missing"
    assert all(records[n]["score"] == "" for n in ("corrupt.mp4", "faceless.mp4", "absent.mp4"))
    printed = capsys.readouterr().out
    assert "no_face" in printed and "2 scored" in printed


@needs_shared
def test_detect_accepts_an_export_folder_with_the_same_scores(tmp_path, tiny_checkpoint):
    main(["export", "--ckpt", str(tiny_checkpoint), "--out", str(tmp_path / "export")])
    from_ckpt = detect([CLIPS[1]], tiny_checkpoint, frames=2, device="cpu")
    from_export = detect([CLIPS[1]], tmp_path / "export", frames=2, device="cpu")
    assert from_export[0]["status"] == "ok"
    assert from_export[0]["score"] == pytest.approx(from_ckpt[0]["score"], abs=1e-5)


def test_a_folder_of_images_is_searched_recursively_and_written_as_csv(tmp_path, tiny_checkpoint):
    folder = tmp_path / "images"
    (folder / "nested").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.png", "nested/b.jpg", "nested/c.png"):
        cv2.imwrite(str(folder / name), rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "results.csv"
    main(
        [
            "detect",
            str(folder),
            "--ckpt",
            str(tiny_checkpoint),
            "--face_crop",
            "false",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--threshold",
            "0.3",
        ]
    )
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [Path(r["path"]).relative_to(folder).as_posix() for r in rows] == ["a.png", "nested/b.jpg", "nested/c.png"]
    assert all(r["kind"] == "image" and r["status"] == "ok" and r["frames"] == "1" for r in rows)
    assert all(r["decision"] == ("fake" if float(r["score"]) >= 0.3 else "real") for r in rows)


@pytest.mark.skipif(not (SHARED / "dfdc_faces").is_dir(), reason=f"DFDC face crops not found under {SHARED}")
def test_face_crops_of_real_images_are_found_and_scored(tiny_checkpoint):
    images = sorted((SHARED / "dfdc_faces" / "real").glob("*.jpg"))[:2]
    records = detect(images, tiny_checkpoint, device="cpu")
    assert [r["status"] for r in records] == ["ok", "ok"] and all(r["frames"] >= 1 for r in records)


def test_exit_status_is_non_zero_when_nothing_can_be_scored(tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "results.csv"
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "detect",
                str(_corrupt_video(tmp_path / "bad.mp4")),
                "--ckpt",
                str(tiny_checkpoint),
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
    assert exit_info.value.code == 1
    assert "no input could be scored" in capsys.readouterr().err
    assert "unreadable" in out.read_text(), "the results file still records the failed input"


@pytest.mark.parametrize("bad", ["missing.ckpt", "garbage.ckpt", "folder"])
def test_an_invalid_checkpoint_exits_2_naming_the_path(tmp_path, capsys, bad):
    ckpt = tmp_path / bad
    if bad == "garbage.ckpt":
        ckpt.write_bytes(b"not a checkpoint")
    elif bad == "folder":
        ckpt.mkdir()
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(SystemExit) as exit_info:
        main(["detect", str(image), "--ckpt", str(ckpt)])
    assert exit_info.value.code == 2
    assert str(ckpt) in capsys.readouterr().err


def test_confident_rule_follows_the_confident_frames_not_the_mean():
    mostly_real_with_a_fake_burst = [0.05] * 5 + [0.95] * 5
    assert aggregate(mostly_real_with_a_fake_burst, "mean") == pytest.approx(0.5)
    assert aggregate(mostly_real_with_a_fake_burst, "confident") == pytest.approx(0.95)  # 50% > 40% fake share
    confidently_real = [0.1] * 19 + [0.6]
    assert aggregate(confidently_real, "confident") == pytest.approx(0.1)  # 95% < 0.2: mean of those
    undecided = [0.3, 0.5, 0.9, 0.1]
    assert aggregate(undecided, "confident") == pytest.approx(np.mean(undecided))
    strict = ConfidentRule(fake_share=0.6)
    assert aggregate(mostly_real_with_a_fake_burst, "confident", strict) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="real_threshold < fake_threshold"):
        ConfidentRule(fake_threshold=0.1, real_threshold=0.2)
