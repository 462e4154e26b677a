"""Dataset indexers on the real FF++/DFDC samples in ../shared/data and on generated Celeb-DF/DFDCP trees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from masm_lightning.data.indexers import (
    index_celebdf,
    index_dataset,
    index_dfd,
    index_dfdc,
    index_dfdcp,
    index_ffpp,
    index_folder,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"real sample data not found at {SHARED}")


@needs_shared
def test_ffpp_sample_lands_in_the_official_splits_with_labels_and_methods():
    records = index_ffpp(SHARED / "FaceForensics++", methods=("Deepfakes", "FaceSwap"))
    present = {r.video_id: r for r in records if r.status == "listed"}
    assert set(present) == {"519", "634", "Deepfakes/519_515", "FaceSwap/634_660"}
    assert (present["519"].split, present["519"].label, present["519"].method) == ("train", 0, "real")
    assert (present["Deepfakes/519_515"].split, present["Deepfakes/519_515"].label) == ("train", 1)
    assert present["Deepfakes/519_515"].original_id == "519"
    assert (present["634"].split, present["FaceSwap/634_660"].split) == ("test", "test")
    assert present["FaceSwap/634_660"].method == "FaceSwap"
    # Every pair of the official lists is indexed: 360/70/70 pairs (720/140/140 real videos), each giving
    # 2 reals + 2 fakes per method.
    counts = {s: sum(r.split == s for r in records) for s in ("train", "val", "test")}
    assert counts == {"train": 360 * 6, "val": 70 * 6, "test": 70 * 6}
    assert len({(r.label, r.video_id) for r in records}) == len(records)
    assert all(r.status == "missing" for r in records if r.video_id not in present)


def test_ffpp_without_split_lists_says_where_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"FaceForensics GitHub repository \(dataset/splits/\)"):
        index_ffpp(tmp_path)


@needs_shared
def test_dfdc_listed_but_absent_video_is_recorded_missing():
    records = {r.video_id: r for r in index_dfdc(SHARED / "DFDC")}
    assert records["brtujopkby"].status == "listed" and records["brtujopkby"].label == 1
    assert records["brtujopkby"].original_id == "gnmmhlbzge"
    assert records["awnfpubqmo"].status == "missing"


def _celebdf_tree(root: Path) -> None:
    for relative in (
        "Celeb-real/id0_0000.mp4",
        "Celeb-real/id0_0001.mp4",
        "YouTube-real/00001.mp4",
        "Celeb-synthesis/id0_id1_0000.mp4",
        "Celeb-synthesis/id0_id2_0001.mp4",
    ):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(b"")
    # Celeb-DF's convention: 1 = real, 0 = fake.
    (root / "List_of_testing_videos.txt").write_text("1 Celeb-real/id0_0001.mp4\n0 Celeb-synthesis/id0_id2_0001.mp4\n")


def test_celebdf_inverted_labels_and_no_test_video_in_train(tmp_path):
    _celebdf_tree(tmp_path)
    records = {r.video_id: r for r in index_celebdf(tmp_path, version="v2")}
    assert (records["Celeb-real/id0_0001"].split, records["Celeb-real/id0_0001"].label) == ("test", 0)
    fake = records["Celeb-synthesis/id0_id2_0001"]
    assert (fake.split, fake.label, fake.original_id) == ("test", 1, "Celeb-real/id0_0001")
    train = {k for k, r in records.items() if r.split == "train"}
    assert train == {"Celeb-real/id0_0000", "YouTube-real/00001", "Celeb-synthesis/id0_id1_0000"}
    assert {r.dataset for r in records.values()} == {"celebdf_v2"}


def _celebdf_escaping(root: Path) -> None:
    _celebdf_tree(root)
    (root / "List_of_testing_videos.txt").write_text("1 ../../etc/passwd\n")


def _dfdcp_escaping(root: Path) -> None:
    (root / "dataset.json").write_text(json.dumps({"../outside.mp4": {"label": "fake", "set": "test"}}))


def _dfdc_escaping(root: Path) -> None:
    (root / "part").mkdir()
    (root / "part" / "metadata.json").write_text(json.dumps({"../../x.mp4": {"label": "FAKE", "split": "train"}}))


TRAVERSALS = {
    "celebdf": ("celebdf-v2", _celebdf_escaping),
    "dfdcp": ("dfdcp", _dfdcp_escaping),
    "dfdc": ("dfdc", _dfdc_escaping),
}


@pytest.mark.parametrize(("name", "build"), TRAVERSALS.values(), ids=TRAVERSALS.keys())
def test_list_entries_escaping_the_root_are_rejected(tmp_path, name, build):
    build(tmp_path)
    with pytest.raises(ValueError, match="resolves outside the dataset root"):
        index_dataset(name, tmp_path)


def test_ffpp_split_entries_must_be_video_numbers(tmp_path):
    (tmp_path / "splits").mkdir()
    for split in ("train", "val", "test"):
        (tmp_path / "splits" / f"{split}.json").write_text(json.dumps([["001", "../../x"]]))
    with pytest.raises(ValueError, match=r"expected pairs of video numbers like \['071', '054'\]"):
        index_ffpp(tmp_path)


def test_dfdcp_and_folder_layouts(tmp_path):
    (tmp_path / "dfdcp" / "method_A" / "a").mkdir(parents=True)
    (tmp_path / "dfdcp" / "method_A" / "a" / "1.mp4").write_bytes(b"x")
    (tmp_path / "dfdcp" / "dataset.json").write_text(
        json.dumps(
            {
                "method_A/a/1.mp4": {"label": "fake", "set": "test"},
                "original_videos/b/2.mp4": {"label": "real", "set": "train"},
            }
        )
    )
    dfdcp = {r.video_id: r for r in index_dfdcp(tmp_path / "dfdcp")}
    assert (dfdcp["method_A/a/1"].label, dfdcp["method_A/a/1"].split, dfdcp["method_A/a/1"].status) == (
        1,
        "test",
        "listed",
    )
    assert (dfdcp["original_videos/b/2"].label, dfdcp["original_videos/b/2"].status) == (0, "missing")

    for relative in ("mine/real/clip.mp4", "mine/fake/sub/x.png", "mine/fake/notes.txt"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"x")
    folder = index_folder(tmp_path / "mine")
    assert [(r.label, r.video_id, r.dataset) for r in folder] == [(0, "clip", "mine"), (1, "sub/x", "mine")]


@needs_shared
def test_dfd_names_the_folders_it_expects():
    with pytest.raises(FileNotFoundError, match=r"no DFD videos .*original_sequences/actors/c23/videos"):
        index_dfd(SHARED / "FaceForensics++")


def test_unknown_dataset_name_lists_the_choices(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'ff'; choose one of ffpp, dfd, celebdf-v1"):
        index_dataset("ff", tmp_path)
