"""Folders are walked through symlinked sub-folders (loops cut) everywhere; dataset lists that do not parse name
the file and line; frame paths that leave the root are refused when the source is read; a rerun of ``preprocess``
removes the ``.partial`` folders of killed runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from masm_lightning.data.indexers import index_celebdf, index_dfdc, index_folder
from masm_lightning.data.sources import read_deepfakebench, read_image_folder
from masm_lightning.errors import InvalidInputError
from masm_lightning.io import walk_files


def _tree_with_links(root: Path) -> Path:
    """``root/data/{real,fake}`` with a symlinked sub-folder (on "another disk"), a loop back to ``real`` and a
    second link to the same folder."""
    elsewhere = root / "other_disk" / "batch2"
    elsewhere.mkdir(parents=True)
    data = root / "data"
    for label in ("real", "fake"):
        (data / label / "local").mkdir(parents=True)
        (data / label / "local" / "a.mp4").write_bytes(b"")
    (elsewhere / "b.mp4").write_bytes(b"")
    (data / "real" / "linked").symlink_to(elsewhere, target_is_directory=True)
    (data / "real" / "linked_again").symlink_to(elsewhere, target_is_directory=True)
    (data / "real" / "local" / "loop").symlink_to(data / "real", target_is_directory=True)
    return data


def test_walk_files_follows_symlinked_folders_once_and_ends_on_loops(tmp_path):
    data = _tree_with_links(tmp_path)
    found = walk_files(data / "real", (".MP4",))
    assert [p.relative_to(data / "real").as_posix() for p in found] == ["linked/b.mp4", "local/a.mp4"]


def test_the_folder_dataset_and_image_folders_include_symlinked_sub_folders(tmp_path):
    data = _tree_with_links(tmp_path)
    ids = {(r.label, r.video_id) for r in index_folder(data)}
    assert ids == {(0, "linked/b"), (0, "local/a"), (1, "local/a")}

    crops = tmp_path / "crops"
    (crops / "fake").mkdir(parents=True)
    (tmp_path / "crops_disk" / "vid7").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "crops_disk" / "vid7" / "003.png"), np.zeros((4, 4, 3), np.uint8))
    (crops / "real").symlink_to(tmp_path / "crops_disk", target_is_directory=True)
    (records,) = read_image_folder(crops, "crops", r"^(?P<video>.+?)[_-](?P<frame>\d+)$")
    assert (records.label, records.video_id, records.frame_index) == (0, "vid7", 3)


def test_detect_scores_the_images_of_symlinked_sub_folders(tmp_path, tiny_checkpoint):
    from masm_lightning.inference.runs import detect

    (tmp_path / "disk2").mkdir()
    cv2.imwrite(str(tmp_path / "disk2" / "face.png"), np.full((32, 32, 3), 128, np.uint8))
    (tmp_path / "inputs").mkdir()
    (tmp_path / "inputs" / "more").symlink_to(tmp_path / "disk2", target_is_directory=True)
    (tmp_path / "inputs" / "more" / "loop").symlink_to(tmp_path / "inputs", target_is_directory=True)
    records = detect([tmp_path / "inputs"], tiny_checkpoint, face_crop=False, device="cpu")
    assert [Path(r["path"]).name for r in records] == ["face.png"]


def test_a_malformed_celebdf_list_line_names_file_and_line(tmp_path):
    (tmp_path / "Celeb-real").mkdir()
    (tmp_path / "List_of_testing_videos.txt").write_text("1 Celeb-real/id0_0000.mp4\n0Celeb-synthesis/x.mp4\n")
    with pytest.raises(InvalidInputError, match=r"List_of_testing_videos.txt:2: expected '<1 real \| 0 fake>"):
        index_celebdf(tmp_path)


def test_dfdc_metadata_and_labels_parse_errors_name_file_and_line(tmp_path):
    part = tmp_path / "dfdc_train_part_0"
    part.mkdir()
    (part / "metadata.json").write_text('{"a.mp4": {"label": "FAKE",\n "original": "b.mp4"}\n "c.mp4": 1}')
    with pytest.raises(InvalidInputError, match=r"metadata.json:3:2: DFDC metadata is not valid JSON"):
        index_dfdc(tmp_path)
    (part / "metadata.json").unlink()
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "labels.csv").write_text("filename,label\nx.mp4,1\ny.mp4\n")
    with pytest.raises(InvalidInputError, match=r"labels.csv:3: expected '<video file>,<0 real \| 1 fake>'"):
        index_dfdc(tmp_path)


def _deepfakebench_json(path: Path, frames: list[str]) -> Path:
    content = {"FF": {"FF-real": {"test": {"000": {"label": "FF-real", "frames": frames}}}}}
    path.write_text(json.dumps(content))
    return path


@pytest.mark.parametrize("frame", ["/etc/passwd", "../../outside.png", "frames/../../outside.png"])
def test_deepfakebench_frames_outside_the_root_are_refused_when_read(tmp_path, frame):
    (tmp_path / "root" / "frames").mkdir(parents=True)
    listing = _deepfakebench_json(tmp_path / "ff.json", ["frames/000.png", frame])
    with pytest.raises(InvalidInputError, match=r"ff.json \(FF-real/test/000\) names .* outside the dataset root"):
        read_deepfakebench(listing, tmp_path / "root")


def test_deepfakebench_absolute_frames_inside_the_root_are_kept(tmp_path):
    (tmp_path / "frames").mkdir()
    cv2.imwrite(str(tmp_path / "frames" / "000.png"), np.zeros((4, 4, 3), np.uint8))
    listing = _deepfakebench_json(tmp_path / "ff.json", [str(tmp_path / "frames" / "000.png")])
    (record,) = read_deepfakebench(listing, tmp_path)
    assert record.path == tmp_path / "frames" / "000.png"


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_rerun_of_preprocess_removes_partial_folders_of_killed_runs(tmp_path, monkeypatch):
    from masm_lightning.data import extract as extract_module
    from masm_lightning.data.settings import ExtractionSettings

    root = tmp_path / "videos"
    (root / "real").mkdir(parents=True)
    (root / "real" / "clip.mp4").write_bytes(b"")  # unreadable: extraction records it without a detector
    out = tmp_path / "out"
    video_folder = out / "videos" / "test" / "real"
    video_folder.mkdir(parents=True)
    stale = video_folder / f".clip.{_dead_pid()}.partial"
    stale.mkdir()
    (stale / "00000.png").write_bytes(b"half")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        running = video_folder / f".clip.{sleeper.pid}.partial"  # the same shard, still running here
        running.mkdir()
        unrelated = video_folder / f".other.{_dead_pid()}.partial"  # not a video of this run
        unrelated.mkdir()
        monkeypatch.setattr(extract_module.MTCNNDetector, "from_settings", lambda *a, **k: None)
        extract_module.extract_dataset("folder", root, out, ExtractionSettings(frames=2), {}, workers=1)
        assert not stale.exists()
        assert running.is_dir() and unrelated.is_dir()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert os.path.isfile(out / "manifest.csv")
