"""The data module's protocol: sources, frame draws, balance, self-blending, splits by video, the extraction cache."""

from __future__ import annotations

import functools
import json
import operator
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from masm_lightning.commands import preprocess as preprocess_module
from masm_lightning.data import extract as extract_module
from masm_lightning.data.datamodule import (
    DemoDataModule,
    FaceForgeryDataModule,
    FrameDataset,
    VideoFrameSampler,
    collate_frames,
)
from masm_lightning.data.forgery_types import FORGERY_TYPES
from masm_lightning.data.manifest import FrameRecord, read_manifest, write_manifest
from masm_lightning.data.settings import ExtractionSettings
from masm_lightning.data.sources import DataSource, load_source, prepare_source
from masm_lightning.data.synthetic import generate_demo_dataset

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
INPUT = {"image_size": 32, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}


def _image(path: Path, value: int = 128, size: int = 48) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((size, size, 3), value, np.uint8))
    return path


def _records(videos: dict[tuple[str, int], int], tmp_path: Path) -> list[FrameRecord]:
    """``frames`` frames (indices 0, 10, 20, …) for each (video id, label)."""
    return [
        FrameRecord(
            "ds",
            "train",
            label,
            "m",
            video,
            10 * i,
            _image(tmp_path / f"{label}" / video / f"{10 * i:05d}.png", 40 * label + i),
        )
        for (video, label), frames in videos.items()
        for i in range(frames)
    ]


def _module(**kwargs) -> FaceForgeryDataModule:
    return FaceForgeryDataModule(num_workers=0, batch_size=4, input_config=INPUT, **kwargs)


# --- frame draws ---


def _sampler(dataset: FrameDataset, **kwargs) -> VideoFrameSampler:
    return VideoFrameSampler(dataset.video_groups(), [r.label for r in dataset.records], **kwargs)


def test_uniform_draw_spreads_frames_over_the_video_and_repeats_every_epoch(tmp_path):
    dataset = FrameDataset(_records({("a", 0): 12}, tmp_path), transform=lambda image: {"image": image})
    sampler = _sampler(dataset, frames_per_video=4, draw="uniform", seed=3)
    frames = lambda: sorted(dataset.records[i].frame_index for i in sampler)
    first = frames()
    assert first == [0, 40, 70, 110], "spread over all 12 extracted frames, not the first 4"
    sampler.set_epoch(1)
    assert frames() == first


def test_random_draw_covers_every_segment_changes_per_epoch_and_is_reproducible_from_the_seed(tmp_path):
    dataset = FrameDataset(_records({("a", 0): 40, ("b", 1): 40}, tmp_path), lambda image: {"image": image})
    draws = {}
    for seed in (0, 0, 1):
        sampler = _sampler(dataset, frames_per_video=4, draw="random", seed=seed)
        for epoch in range(3):
            sampler.set_epoch(epoch)
            draws.setdefault((seed, epoch), []).append(list(sampler))
    assert all(a == b for a, b in [draws[(0, e)] for e in range(3)]), "same seed and epoch, same draw"
    assert draws[(0, 0)][0] != draws[(0, 1)][0] and draws[(0, 0)][0] != draws[(1, 0)][0]
    for indices in (draws[(0, e)][0] for e in range(3)):
        per_video = defaultdict(list)
        for i in indices:
            per_video[dataset.records[i].video_id].append(dataset.records[i].frame_index // 10)
        for positions in per_video.values():  # one frame in each quarter of the video
            assert sorted(p // 10 for p in positions) == [0, 1, 2, 3]
    uneven = FrameDataset(_records({("c", 0): 3}, tmp_path / "c"), lambda image: {"image": image})
    sampler = _sampler(uneven, frames_per_video=2, draw="random", seed=0)
    seen = set()
    for epoch in range(20):
        sampler.set_epoch(epoch)
        drawn = list(sampler)
        assert len(set(drawn)) == 2, "segments of an uneven split never share a frame"
        seen.update(drawn)
    assert seen == {0, 1, 2}


def test_balanced_sampler_sees_both_classes_equally_and_ddp_ranks_split_one_epoch(tmp_path):
    dataset = FrameDataset(
        _records({("r", 0): 4, **{(f"f{i}", 1): 4 for i in range(4)}}, tmp_path), lambda image: {"image": image}
    )
    plain = Counter(dataset.records[i].label for i in _sampler(dataset, frames_per_video=4, seed=0))
    assert plain == {0: 4, 1: 16}
    drawn = Counter()
    for epoch in range(50):
        sampler = _sampler(dataset, frames_per_video=4, balance=True, seed=0)
        sampler.set_epoch(epoch)
        drawn.update(dataset.records[i].label for i in sampler)
    assert abs(drawn[0] / sum(drawn.values()) - 0.5) < 0.05
    ranks = [list(_sampler(dataset, frames_per_video=3, seed=5, num_replicas=3, rank=r)) for r in range(3)]
    whole = _sampler(dataset, frames_per_video=3, seed=5).epoch_indices()
    assert sorted(functools.reduce(operator.iadd, ranks, [])) == sorted(whole) and len({len(r) for r in ranks}) == 1


def test_every_item_carries_its_forgery_type_and_batches_collate_it_like_the_label(tmp_path):
    records = [
        FrameRecord("ffpp", "train", 1, "Face2Face", "f2f/a", 0, _image(tmp_path / "a.png")),
        FrameRecord("ffpp", "train", 0, "real", "a", 0, _image(tmp_path / "b.png")),
        FrameRecord("mine", "train", 1, "fake", "x", 0, _image(tmp_path / "c.png")),
        FrameRecord("ffpp", "train", 0, "real", "b", 0, _image(tmp_path / "d.png")),
    ]
    dataset = FrameDataset(records, lambda image: {"image": image}, self_blended=[False, False, False, True])
    batch = collate_frames([dataset[i] for i in range(4)])
    names = [FORGERY_TYPES[t] for t in batch["forgery_type"].tolist()]
    assert names == ["Face2Face", "real", "unknown", "sbi"]  # a self-blended real is its own type
    assert batch["forgery_type"].dtype == batch["label"].dtype == torch.int64
    assert batch["forgery_type"].shape == batch["label"].shape == (4,)
    # Per video too (the order of dataset.videos), for the per-type report.
    assert [FORGERY_TYPES[t] for t in dataset.video_types] == ["real", "Face2Face", "sbi", "unknown"]


# --- the data module ---


def test_loss_balance_gives_class_weights_and_self_blend_turns_reals_into_pseudo_fakes(tmp_path):
    manifest = tmp_path / "m.csv"
    rows = [
        dict(
            dataset="ds",
            split="train",
            label=label,
            method="m",
            video_id=f"v{label}{i}",
            frame_index=0,
            crop_path=str(_image(tmp_path / f"{label}{i}.png", 60 + 30 * label, size=64)),
            status="ok",
        )
        for label, count in ((0, 1), (1, 3))
        for i in range(count)
    ]
    write_manifest(manifest, rows)
    data = _module(train=DataSource("manifest", manifest=str(manifest)), balance="loss", augmentation="none")
    with pytest.warns(UserWarning, match="no usable 'val' videos"):
        data.setup("fit")
    train = data.datasets["train"]
    weights = {train[i]["label"]: train[i]["weight"] for i in range(len(train))}  # carried by every item
    assert weights == pytest.approx({0: 2.0, 1: 2 / 3})
    only = _module(train=DataSource("manifest", manifest=str(manifest)), self_blend="only", augmentation="none")
    with pytest.warns(UserWarning, match="no usable 'val' videos"):
        only.setup("fit")
    train = only.datasets["train"]
    assert [(r.label, r.video_id) for r in train.records] == [(0, "v00"), (1, "sbi/v00")]
    torch.manual_seed(0)
    real, blended = train[0]["image"], train[1]["image"]
    assert train[1]["label"] == 1 and not torch.equal(real, blended), "the pseudo-fake differs from its real"
    assert torch.equal(real[:, 0, 0], blended[:, 0, 0]), "blending stays inside the face, the corner is untouched"


def test_empty_validation_and_test_splits_are_skipped_with_a_warning(tmp_path):
    manifest = tmp_path / "m.csv"
    write_manifest(
        manifest,
        [
            dict(
                dataset="ds",
                split="train",
                label=lbl,
                method="m",
                video_id=str(lbl),
                frame_index=0,
                crop_path=str(_image(tmp_path / f"{lbl}.png")),
                status="ok",
            )
            for lbl in (0, 1)
        ]
        + [
            dict(
                dataset="ds",
                split="val",
                label=0,
                method="m",
                video_id="gone",
                frame_index="",
                crop_path="",
                status="no_face",
            )
        ],
    )
    source = DataSource("manifest", manifest=str(manifest))
    data = _module(train=source, test=[DataSource("manifest", manifest=str(manifest), name="other")])
    with pytest.warns(UserWarning, match="no usable 'val' videos: validation is skipped"):
        data.setup("fit")
    assert data.val_dataloader() == [] and len(data.datasets["train"]) == 2
    empty = tmp_path / "empty.csv"
    write_manifest(
        empty,
        [
            dict(
                dataset="e",
                split="test",
                label=0,
                method="m",
                video_id="x",
                frame_index="",
                crop_path="",
                status="missing",
            )
        ],
    )
    data = _module(train=source, test=[DataSource("manifest", manifest=str(empty), name="empty"), source])
    with pytest.warns(UserWarning, match="test set 'empty' has no usable videos: skipped"):
        data.setup("test")
    assert data.test_names == ["m"] and len(data.test_dataloader()) == 1


def test_bad_options_name_the_value_and_the_choices():
    with pytest.raises(ValueError, match=r"data.balance='weights' is not one of \['none', 'sampler', 'loss'\]"):
        FaceForgeryDataModule(balance="weights")
    with pytest.raises(ValueError, match=r"data source 'deepfakebench' needs `dataset_json`"):
        DataSource("deepfakebench", root="/x")
    with pytest.raises(ValueError, match="split ratios"):
        DataSource("folder", root="/x", split={"train": 0.8, "holdout": 0.2})
    same = dict(dataset="ffpp", root="/data/ff")
    with pytest.raises(ValueError, match="two data sources are named 'ffpp_c23' but read different data"):
        FaceForgeryDataModule(train=DataSource(**same), test=[DataSource(**same, methods=["FaceSwap"])])
    with pytest.raises(ValueError, match="two data sources are named 'faces' but read different data"):
        FaceForgeryDataModule(
            test=[DataSource("folder", root="/a/faces", crops=True), DataSource("folder", root="/b/faces", crops=True)]
        )
    with pytest.raises(ValueError, match=r"data\.test lists a test set twice"):
        FaceForgeryDataModule(test=[DataSource(**same), DataSource(**same)])
    FaceForgeryDataModule(train=DataSource(**same), test=[DataSource(**same)])  # train's own test split: fine


# --- sources ---


def _deepfakebench_tree(root: Path) -> Path:
    """A DeepfakeBench-style FF++ JSON: the same fake name under two methods, 10 frames per video."""

    def video(label_name, mode, name):
        frames = [f"ff/{label_name}/{name}/{i:03d}.png" for i in range(10)]
        for i, frame in enumerate(frames):
            _image(root / frame, 10 * i)
        return {"label": label_name, "frames": frames}

    info = {
        "FaceForensics++": {
            "FF-real": {"train": {"c23": {"000": video("FF-real", "train", "000")}}, "val": {}, "test": {}},
            "FF-DF": {"train": {"c23": {"000_003": video("FF-DF", "train", "000_003")}}, "val": {}, "test": {}},
            "FF-FS": {"train": {"c23": {"000_003": video("FF-FS", "train", "000_003")}}, "val": {}, "test": {}},
        }
    }
    path = root / "FaceForensics++.json"
    path.write_text(json.dumps(info))
    return path


def test_deepfakebench_frames_are_adopted_as_they_are_with_unique_keys_and_spread_frames(tmp_path, monkeypatch):
    listing = _deepfakebench_tree(tmp_path)
    monkeypatch.setattr(
        extract_module, "extract_dataset", lambda *a, **k: pytest.fail("DeepfakeBench crops must not be re-extracted")
    )
    source = DataSource("deepfakebench", root=str(tmp_path), dataset_json=str(listing), name="ffpp_dfb")
    data = _module(train=source, train_frames=4)
    data.prepare_data()
    with pytest.warns(UserWarning, match="no usable 'val' videos"):
        data.setup("fit")
    train = data.datasets["train"]
    assert train.videos == [
        ("ffpp_dfb", 0, "FF-real/000"),
        ("ffpp_dfb", 1, "FF-DF/000_003"),
        ("ffpp_dfb", 1, "FF-FS/000_003"),
    ], "one video per method, never merged by name"
    drawn = sorted(
        train.records[i].frame_index
        for i in data.train_dataloader().sampler
        if train.records[i].video_id == "FF-DF/000_003"
    )
    assert drawn == [0, 3, 6, 9], "spread over the 10 listed frames, not the first 4"


def test_deepfakebench_frames_in_a_symlinked_folder_are_read(tmp_path):
    elsewhere = tmp_path / "other_disk" / "FaceForensics++"
    _image(elsewhere / "v" / "000.png")
    root = tmp_path / "rgb"
    root.mkdir()
    (root / "FaceForensics++").symlink_to(elsewhere, target_is_directory=True)
    listing = tmp_path / "x.json"
    listing.write_text(
        json.dumps({"X": {"X_real": {"test": {"v": {"label": "X_real", "frames": ["FaceForensics++/v/000.png"]}}}}})
    )
    (record,) = load_source(DataSource("deepfakebench", root=str(root), dataset_json=str(listing)), tmp_path)
    assert record.video_key == ("X", 0, "X_real/v") and record.path.is_file()


def test_crops_in_per_video_folders_keep_their_frame_order(tmp_path):
    for frame in (2, 10, 1):
        _image(tmp_path / "faces" / "real" / "clip" / f"{frame}.png")
    records = load_source(DataSource("folder", root=str(tmp_path / "faces"), crops=True), tmp_path)
    assert {r.video_id for r in records} == {"clip"}
    assert sorted(r.frame_index for r in records) == [1, 2, 10]


def test_deepfakebench_paths_outside_the_root_are_rejected(tmp_path):
    listing = tmp_path / "x.json"
    listing.write_text(
        json.dumps({"X": {"X_real": {"test": {"v": {"label": "X_real", "frames": ["../../etc/passwd"]}}}}})
    )
    with pytest.raises(ValueError, match="resolves outside the dataset root"):
        load_source(DataSource("deepfakebench", root=str(tmp_path), dataset_json=str(listing)), tmp_path)


@pytest.mark.skipif(not (SHARED / "dfdc_faces").is_dir(), reason=f"real sample data not found at {SHARED}")
def test_folder_of_crops_keeps_every_video_in_one_split():
    # The crops of one DFDC video come under several names (train_<id>_3.jpg, test_<id>_0.jpg, …, fakes
    # <id>_<original>_<n>): the pattern says which part names the video.
    pattern = r"^(?:train|test|valid)_(?P<video>[a-z]+)(?:_[a-z]+)?_(?P<frame>\d+)$"
    source = DataSource(
        "folder",
        root=str(SHARED / "dfdc_faces"),
        crops=True,
        frame_pattern=pattern,
        split={"train": 0.6, "val": 0.2, "test": 0.2},
    )
    records = load_source(source, Path("unused"))
    assert len(records) == 166
    # MANIFEST.tsv says which DFDC video each crop came from: its frames must share one split.
    lines = (SHARED / "dfdc_faces" / "MANIFEST.tsv").read_text().splitlines()[1:]
    video_of = {line.split("\t")[0]: line.split("\t")[4].split()[0] for line in lines}
    splits = defaultdict(set)
    for r in records:
        splits[video_of[f"{'fake' if r.label else 'real'}/{r.path.name}"]].add(r.split)
    assert all(len(s) == 1 for s in splits.values())
    videos = {r.video_key for r in records}
    assert len(videos) == len(splits), "crops are grouped into the videos they came from"
    share = Counter(s for (s,) in splits.values())
    assert share["train"] > share["val"] > 0 and share["test"] > 0
    assert load_source(source, Path("unused")) == records, "the split is reproducible"


def test_extraction_runs_once_and_again_only_when_settings_or_videos_change(tmp_path, monkeypatch):
    calls = []

    def fake_extract(dataset, root, out, settings, options, **kwargs):
        calls.append((settings.frames, options))
        out.mkdir(parents=True, exist_ok=True)
        write_manifest(out / "manifest.csv", [])

    monkeypatch.setattr(extract_module, "extract_dataset", fake_extract)
    (tmp_path / "videos" / "real").mkdir(parents=True)
    source = DataSource("folder", root=str(tmp_path / "videos"))
    cache = tmp_path / "cache"
    assert prepare_source(source, cache, ExtractionSettings(frames=4))
    assert not prepare_source(source, cache, ExtractionSettings(frames=4)), "same settings: reused"
    assert prepare_source(source, cache, ExtractionSettings(frames=8)), "new settings: extracted again"
    assert not prepare_source(source, cache, ExtractionSettings(frames=8))
    (cache / "videos" / "prepared.json").unlink()  # as after an interrupted extraction
    assert prepare_source(source, cache, ExtractionSettings(frames=8))
    assert [c[0] for c in calls] == [4, 8, 8]
    # The selected videos: FF++ methods (order does not matter, the set does).
    ffpp = dict(dataset="ffpp", root=str(tmp_path / "videos"))
    assert prepare_source(DataSource(**ffpp, methods=["Deepfakes", "FaceSwap"]), cache, ExtractionSettings())
    assert not prepare_source(DataSource(**ffpp, methods=["FaceSwap", "Deepfakes"]), cache, ExtractionSettings())
    assert prepare_source(DataSource(**ffpp, methods=["FaceSwap"]), cache, ExtractionSettings())
    assert calls[-1][1]["methods"] == ("FaceSwap",)


def test_a_preprocess_run_is_reused_by_the_data_module(tmp_path, monkeypatch):
    def fake_extract(dataset, root, out, settings, options, **kwargs):
        out.mkdir(parents=True, exist_ok=True)
        write_manifest(out / "manifest.csv", [])
        return out / "manifest.csv"

    monkeypatch.setattr(preprocess_module, "extract_dataset", fake_extract)
    (tmp_path / "videos" / "real").mkdir(parents=True)
    preprocess_module.preprocess("folder", tmp_path / "videos", tmp_path / "cache" / "videos")
    monkeypatch.setattr(extract_module, "extract_dataset", lambda *a, **k: pytest.fail("extracted again"))
    assert not prepare_source(
        DataSource("folder", root=str(tmp_path / "videos")), tmp_path / "cache", ExtractionSettings()
    )


def test_face_crop_settings_are_known_for_inference_when_they_can_be(tmp_path):
    extracted = FaceForgeryDataModule(
        train=DataSource("folder", root=str(tmp_path)), extraction=ExtractionSettings(crop="aligned", size=224)
    )
    assert extracted.face_crop["crop"] == "aligned" and extracted.face_crop["size"] == 224
    manifest = tmp_path / "faces" / "manifest.csv"
    manifest.parent.mkdir()
    settings = manifest.parent / "settings.json"
    settings.write_text(json.dumps({"hash": "x", "settings": {"frames": 16, "crop": "box", "size": 128}}))
    from_preprocess = FaceForgeryDataModule(train=DataSource("manifest", manifest=str(manifest)))
    assert from_preprocess.face_crop["frames"] == 16 and from_preprocess.face_crop["size"] == 128
    settings.write_text(json.dumps({"hash": "x", "settings": {"videos": 8, "seed": 0}}))  # another tool's file
    assert from_preprocess.face_crop is None
    listing = _deepfakebench_tree(tmp_path / "dfb")
    deepfakebench = FaceForgeryDataModule(
        train=DataSource("deepfakebench", root=str(tmp_path / "dfb"), dataset_json=str(listing))
    )
    assert deepfakebench.face_crop["crop"] == "aligned" and deepfakebench.face_crop["size"] == 256


def test_the_demo_holds_one_type_out_of_training_and_refuses_an_unknown_one(tmp_path):
    manifest = generate_demo_dataset(tmp_path, {"train": 12, "val": 6, "test": 8}, frames_per_video=1, size=32)
    methods = defaultdict(set)
    for record in read_manifest(manifest):
        methods[record.split].add(record.method)
    assert methods["train"] == methods["val"] == {"real", "demo_blend", "demo_upsample", "demo_colour"}
    assert methods["test"] == {"real", "demo_blend", "demo_upsample", "demo_colour", "demo_grid"}
    with pytest.raises(ValueError, match=r"held_out 'demo_gird' must be one of the forgery types"):
        DemoDataModule(root=str(tmp_path), held_out="demo_gird")
    with pytest.raises(ValueError, match=r"forgery_types \['deepfake'\] are not a choice of"):
        DemoDataModule(root=str(tmp_path), forgery_types=["deepfake"])


def test_the_demo_draws_frames_from_the_run_seed_and_generates_from_its_own(tmp_path, monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    demo = DemoDataModule(root=str(tmp_path / "demo"), generation_seed=3)
    assert demo.seed == 7, "frame draws follow seed_everything, not the generation seed"
    assert DemoDataModule(root=str(tmp_path / "demo"), seed=5).seed == 5
    first = generate_demo_dataset(tmp_path / "a", videos={"train": 2}, frames_per_video=1, size=32, seed=3)
    other = generate_demo_dataset(tmp_path / "b", videos={"train": 2}, frames_per_video=1, size=32, seed=4)
    image = lambda manifest: cv2.imread(str(read_manifest(manifest)[0].path))
    assert not np.array_equal(image(first), image(other)), "the generation seed decides the images"


# --- seeded augmentation ---


def _noisy_images(tmp_path: Path, count: int) -> list[FrameRecord]:
    """Frames with texture, so every augmentation of the ``effort`` preset changes pixels."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(count):
        path = tmp_path / f"{i}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
        records.append(FrameRecord("ds", "train", i % 2, "m", f"v{i}", 0, path))
    return records


def _epoch_images(
    dataset: FrameDataset, sampler: VideoFrameSampler, epoch: int, workers: int
) -> dict[int, torch.Tensor]:
    sampler.set_epoch(epoch)
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, sampler=sampler, num_workers=workers)
    return {int(i): image for batch in loader for i, image in zip(batch["index"], batch["image"])}


def test_augmentation_and_self_blend_are_seeded_per_sample_and_epoch_whatever_the_workers(tmp_path):
    from masm_lightning.data.transforms import train_transform

    records = _noisy_images(tmp_path, 6)
    blended = [False] * 6 + [True] * 6  # every frame also as a self-blended pseudo-fake

    def images(seed: int, epoch: int, workers: int) -> dict[int, torch.Tensor]:
        # A fresh pipeline each time: albumentations' own state (seeded at random on creation) must not matter.
        dataset = FrameDataset(records + records, train_transform(32, (0.5,) * 3, (0.5,) * 3, "effort"), blended)
        sampler = _sampler(dataset, frames_per_video=1, seed=seed)
        return _epoch_images(dataset, sampler, epoch, workers)

    reference = images(seed=4, epoch=1, workers=0)
    for again in (images(seed=4, epoch=1, workers=0), images(seed=4, epoch=1, workers=2)):
        assert again.keys() == reference.keys()
        for i in reference:
            assert torch.equal(again[i], reference[i]), f"sample {i}: same seed and epoch must give the same image"
    for other in (images(seed=4, epoch=2, workers=0), images(seed=5, epoch=1, workers=0)):
        changed = [i for i in reference if not torch.equal(other[i], reference[i])]
        assert len(changed) >= 8, "another epoch or seed draws other augmentations"
