"""Face extraction on the real clips of ../shared/data and on generated bad files."""

from __future__ import annotations

import csv
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from masm_lightning.cli import main
from masm_lightning.commands.preprocess import preprocess
from masm_lightning.data import extract as extract_module
from masm_lightning.data.crops import FACE_TEMPLATE_112, crop_aligned, crop_box
from masm_lightning.data.faces import MTCNNDetector
from masm_lightning.data.settings import ExtractionSettings
from masm_lightning.data.video import read_frames, sample_indices

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"real sample data not found at {SHARED}")
FFPP = dict(
    dataset="ffpp",
    root=SHARED / "FaceForensics++",
    methods=["Deepfakes", "FaceSwap"],
    frames=3,
    workers=1,
    device="cpu",
)


def _rows(manifest: Path) -> list[dict[str, str]]:
    with manifest.open(newline="") as f:
        return list(csv.DictReader(f))


def test_frames_are_spread_over_the_whole_video_not_the_first_k():
    assert sample_indices(300, 4) == [37, 112, 187, 262]
    assert sample_indices(3, 8) == [0, 1, 2]
    assert sample_indices(0, 8) == []


def test_box_crop_is_square_centred_and_padded_past_the_frame():
    frame = np.zeros((100, 200, 3), np.uint8)
    frame[40:60, 150:170] = 255  # a 20x20 "face"
    crop = crop_box(frame, np.array([150, 40, 170, 60], np.float32), size=52, scale=1.3)
    assert crop.shape == (52, 52, 3)
    ys, xs = np.nonzero(crop[..., 0] > 128)
    assert abs(xs.mean() - 25.5) < 1.5 and abs(ys.mean() - 25.5) < 1.5
    assert 38 <= xs.max() - xs.min() + 1 <= 42  # 20 px face × (52 / 26) = 40 px
    edge = crop_box(frame, np.array([190, 0, 210, 20], np.float32), size=32, scale=1.3)
    assert edge.shape == (32, 32, 3)  # off-frame parts are padded, not an error


def test_aligned_crop_puts_the_landmarks_on_the_template():
    size, scale = 128, 1.3
    template = ((FACE_TEMPLATE_112 / 112.0 - 0.5) / scale + 0.5) * size
    frame = np.zeros((300, 300, 3), np.uint8)
    landmarks = FACE_TEMPLATE_112 * 2 + 40  # a face twice the template's size, shifted
    for x, y in landmarks.round().astype(int):
        cv2.circle(frame, (int(x), int(y)), 3, (255, 255, 255), -1)
    crop = crop_aligned(frame, landmarks, size, scale)
    for x, y in template.round().astype(int):
        assert crop[y, x, 0] > 100


@pytest.fixture(scope="module")
def ffpp_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted single-process run over the FF++ sample, shared by the tests that only read it."""
    if not SHARED.is_dir():
        pytest.skip(f"real sample data not found at {SHARED}")
    return preprocess(out=tmp_path_factory.mktemp("ffpp_straight"), **FFPP)


@pytest.mark.slow
@needs_shared
def test_ffpp_sample_gives_a_face_crop_for_every_sampled_frame(ffpp_manifest):
    manifest, tmp_path = ffpp_manifest, ffpp_manifest.parent
    rows = [r for r in _rows(manifest) if r["status"] == "ok"]
    videos = {(r["split"], r["label"], r["video_id"]) for r in rows}
    assert videos == {
        ("train", "0", "519"),
        ("train", "1", "Deepfakes/519_515"),
        ("test", "0", "634"),
        ("test", "1", "FaceSwap/634_660"),
    }
    assert len(rows) == 4 * 3 and all(float(r["det_prob"]) >= 0.9 for r in rows)
    detector = MTCNNDetector(device="cpu")
    crops = [cv2.cvtColor(cv2.imread(str(tmp_path / r["crop_path"])), cv2.COLOR_BGR2RGB) for r in rows]
    assert all(c.shape == (256, 256, 3) for c in crops)
    for (boxes, probs, _), row in zip(detector(crops), rows):
        assert len(probs) and probs.max() > 0.9, f"no face in {row['crop_path']}"
        centre = boxes[probs.argmax()].reshape(2, 2).mean(0)
        assert np.all(np.abs(centre - 128) < 40), f"face not centred in {row['crop_path']}"
    missing = [r for r in _rows(manifest) if r["status"] == "missing"]
    assert missing and all(r["crop_path"] == "" for r in missing)


@needs_shared
def test_dfdc_part_records_the_missing_video_and_extracts_the_present_one(tmp_path):
    manifest = preprocess(dataset="dfdc", root=SHARED / "DFDC", out=tmp_path, frames=2, workers=1, device="cpu")
    by_video = {}
    for row in _rows(manifest):
        by_video.setdefault(row["video_id"], []).append(row)
    assert [r["status"] for r in by_video["awnfpubqmo"]] == ["missing"]
    assert [r["status"] for r in by_video["brtujopkby"]] == ["ok", "ok"]
    assert by_video["brtujopkby"][0]["original_id"] == "gnmmhlbzge"


def _noise_video(path: Path, frames: int = 12) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (96, 96))
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8))
    writer.release()


def test_bad_files_get_their_status_and_the_run_goes_on(tmp_path, capsys):
    real = tmp_path / "data" / "real"
    real.mkdir(parents=True)
    (real / "zero_byte.mp4").write_bytes(b"")
    (real / "not_a_video.mp4").write_text("this is text, not H.264")
    _noise_video(real / "no_face.mp4")
    _noise_video(tmp_path / "full.mp4")
    (real / "truncated.mp4").write_bytes((tmp_path / "full.mp4").read_bytes()[:600])
    (tmp_path / "data" / "fake").mkdir()
    manifest = preprocess(
        dataset="folder", root=tmp_path / "data", out=tmp_path / "out", frames=4, workers=2, device="cpu"
    )
    status = {r["video_id"]: r["status"] for r in _rows(manifest)}
    assert status == {
        "zero_byte": "unreadable",
        "not_a_video": "unreadable",
        "no_face": "no_face",
        "truncated": "unreadable",
    }
    with pytest.raises(SystemExit) as exit_info:  # the command line: nothing scored is exit status 1
        main(
            [
                "preprocess",
                "--dataset",
                "folder",
                "--root",
                str(tmp_path / "data"),
                "--out",
                str(tmp_path / "out2"),
                "--frames",
                "2",
                "--num-shards",
                "1",
                "--reuse-original-boxes=false",
            ]
        )
    assert exit_info.value.code == 1 and "no video gave a face crop" in capsys.readouterr().err


def test_a_wrong_root_exits_2_with_a_message(tmp_path, capsys):
    argv = ["preprocess", "--dataset", "ffpp", "--root", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:  # any other exception is a traceback: the test fails
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "FF++ root" in err and "Traceback" not in err


@pytest.mark.slow
@needs_shared
@pytest.mark.parametrize("workers", [1, 2])
def test_interrupted_run_resumes_to_the_same_manifest(tmp_path, monkeypatch, workers, ffpp_manifest):
    reference = ffpp_manifest.read_text()  # one worker, uninterrupted
    options = {**FFPP, "workers": workers}

    real_extract = extract_module.extract_video
    calls, lock = {"n": 0}, threading.Lock()

    def dies_on_the_third_real_video(record, *args, **kwargs):
        if record.status != "missing":
            with lock:  # workers call this from several threads
                calls["n"] += 1
                third = calls["n"] == 3
            if third:
                raise KeyboardInterrupt  # as if killed
        return real_extract(record, *args, **kwargs)

    monkeypatch.setattr("masm_lightning.data.extract.extract_video", dies_on_the_third_real_video)
    with pytest.raises(KeyboardInterrupt):
        preprocess(out=tmp_path / "resumed", **options)
    monkeypatch.setattr("masm_lightning.data.extract.extract_video", real_extract)
    assert preprocess(out=tmp_path / "resumed", **options).read_text() == reference


@pytest.mark.slow
@needs_shared
def test_two_shards_combine_to_the_single_run_manifest(tmp_path, ffpp_manifest):
    single = ffpp_manifest.read_text()
    for shard in (0, 1):
        part = preprocess(out=tmp_path / "sharded", shard=shard, num_shards=2, **FFPP)
        assert part.name == f"manifest.shard{shard}-of-2.csv"
    combined = preprocess(out=tmp_path / "sharded", **FFPP)  # everything is done: only combines
    assert combined.read_text() == single


@pytest.mark.slow
@needs_shared
def test_fakes_can_reuse_their_originals_boxes(tmp_path):
    manifest = preprocess(out=tmp_path, reuse_original_boxes=True, **FFPP)
    rows = [r for r in _rows(manifest) if r["status"] == "ok"]
    boxes = {(r["video_id"], r["frame_index"]): r["box"] for r in rows}
    for video, original in (("Deepfakes/519_515", "519"), ("FaceSwap/634_660", "634")):
        fake = {f: b for (v, f), b in boxes.items() if v == video}
        assert fake and all(boxes[(original, f)] == b for f, b in fake.items())


def _two_faces(frames: list[np.ndarray]) -> list:
    """A stand-in detector: a big face on the left and a smaller one on the right of every frame."""
    boxes = np.array([[4, 10, 44, 50], [60, 20, 84, 44]], np.float32)
    points = np.stack([np.tile(b.reshape(2, 2).mean(0), (5, 1)) + np.arange(5)[:, None] for b in boxes])
    return [(boxes, np.array([0.99, 0.95], np.float32), points) for _ in frames]


@pytest.mark.parametrize(("faces", "expected"), [("largest", 1), ("all", 2)])
def test_largest_face_by_default_all_faces_on_request(tmp_path, faces, expected):
    from masm_lightning.data.extract import extract_video
    from masm_lightning.data.indexers import VideoRecord
    from masm_lightning.data.settings import ExtractionSettings

    _noise_video(tmp_path / "clip.mp4", frames=6)
    record = VideoRecord("mine", "test", 0, "real", "clip", "", tmp_path / "clip.mp4", "listed")
    rows = extract_video(record, tmp_path / "out", ExtractionSettings(frames=3, faces=faces, size=32), _two_faces)
    assert len(rows) == 3 * expected and all(r["status"] == "ok" for r in rows)
    assert {r["box"] for r in rows} == (
        {"4.0 10.0 44.0 50.0"} if faces == "largest" else {"4.0 10.0 44.0 50.0", "60.0 20.0 84.0 44.0"}
    )
    assert all((tmp_path / "out" / r["crop_path"]).is_file() for r in rows)


def test_preprocess_holds_a_bounded_number_of_frames_whatever_the_frame_count(tmp_path):
    import weakref

    from masm_lightning.data.extract import extract_video
    from masm_lightning.data.indexers import VideoRecord
    from masm_lightning.data.settings import ExtractionSettings

    _noise_video(tmp_path / "clip.mp4", frames=60)
    seen: list[weakref.ref] = []
    most_alive = 0

    def counting_two_faces(frames: list[np.ndarray]) -> list:
        nonlocal most_alive
        seen.extend(weakref.ref(f) for f in frames)
        most_alive = max(most_alive, sum(ref() is not None for ref in seen))
        return _two_faces(frames)

    record = VideoRecord("mine", "test", 0, "real", "clip", "", tmp_path / "clip.mp4", "listed")
    settings = ExtractionSettings(frames=50, size=32)
    rows = extract_video(record, tmp_path / "out", settings, counting_two_faces, chunk_frames=4)
    assert len(rows) == 50 and {r["box"] for r in rows} == {"4.0 10.0 44.0 50.0"}, "the tracked face only"
    assert most_alive <= 2 * 4, f"{most_alive} frames alive at once with chunks of 4"
    crops = sorted(p.name for p in (tmp_path / "out" / "mine" / "test" / "real" / "clip").iterdir())
    assert crops == sorted(Path(r["crop_path"]).name for r in rows), "the faces not chosen are not left behind"


def test_images_in_a_folder_dataset_are_single_frames(tmp_path):
    from masm_lightning.data.extract import extract_video
    from masm_lightning.data.indexers import index_folder
    from masm_lightning.data.settings import ExtractionSettings

    (tmp_path / "data" / "fake").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "data" / "fake" / "face.png"), np.full((96, 96, 3), 127, np.uint8))
    (record,) = index_folder(tmp_path / "data")
    rows = extract_video(record, tmp_path / "out", ExtractionSettings(frames=8, size=32), _two_faces)
    assert [(r["status"], r["frame_index"]) for r in rows] == [("ok", 0)]


def _decode_every_frame(path: Path, count: int) -> dict[int, np.ndarray]:
    """The reference: OpenCV decodes the whole video in order; keep the frames sample_indices picks."""
    capture = cv2.VideoCapture(str(path))
    wanted, frames, index = set(sample_indices(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), count)), {}, 0
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        if index in wanted:
            frames[index] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        index += 1


@pytest.mark.slow
@needs_shared
@pytest.mark.parametrize(("count", "threads"), [(32, 1), (3, 0)])
def test_sampled_frames_are_bit_identical_to_decoding_every_frame(count, threads):
    for path in (
        SHARED / "FaceForensics++/manipulated_sequences/Deepfakes/c23/videos/519_515.mp4",
        SHARED / "DFDC/dfdc_train_part_0/brtujopkby.mp4",
    ):
        reference = _decode_every_frame(path, count)
        indices, frames, status = read_frames(path, count, decode_threads=threads)
        assert status == "ok" and indices == sorted(reference)
        assert all(np.array_equal(reference[i], frame) for i, frame in zip(indices, frames)), path.name


def _short_gop_video(path: Path, x264_params: str, frames: int = 120) -> None:
    """A video whose every frame differs (a moving pattern, a frame-numbered band), a keyframe every 12 frames."""
    import av

    rng = np.random.default_rng(0)
    pattern = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25, options={"x264-params": x264_params})
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for i in range(frames):
            image = np.roll(pattern, 3 * i, axis=1)
            image[:8] = 7 * i % 256
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.mark.parametrize("name", ["closed_gop.mp4", "open_gop.mp4", "open_gop.mkv", "b_frames.avi"])
def test_skipping_groups_of_pictures_keeps_every_sampled_frame_bit_identical(tmp_path, name):
    import av

    path = tmp_path / name
    gop = "keyint=12:min-keyint=12:scenecut=0:bframes=3" + (":open-gop=1" if "open" in name else "")
    _short_gop_video(path, gop)
    with av.open(str(path)) as container:  # reference: every frame decoded, in display (output) order
        every = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(every) == 120
    for count in (3, 8):  # 3 and 8 of 120 frames: most 12-frame groups hold no sampled frame
        for threads in (1, 0):
            indices, frames, status = read_frames(path, count, decode_threads=threads)
            assert status == "ok" and indices == sample_indices(120, count), (count, threads)
            assert all(np.array_equal(every[i], frame) for i, frame in zip(indices, frames)), (count, threads)


def test_rotated_phone_videos_are_read_upright(tmp_path):
    import av

    path = tmp_path / "portrait.mp4"
    with av.open(str(path), "w") as container:  # landscape pixels, shown rotated by 90 degrees
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        stream.set_display_rotation(90)
        image = np.zeros((32, 64, 3), np.uint8)
        image[:, :16] = 255
        for _ in range(5):
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    _indices, frames, status = read_frames(path, 2)
    shown = cv2.cvtColor(cv2.VideoCapture(str(path)).read()[1], cv2.COLOR_BGR2RGB)  # OpenCV applies the rotation
    assert status == "ok" and len(frames) == 2
    assert frames[0].shape == shown.shape == (64, 32, 3)
    assert np.abs(frames[0].astype(int) - shown).max() <= 2


@pytest.mark.parametrize(("field", "value"), [("min_face", 0.0), ("detect_short_side", 8), ("frames", 0)])
def test_invalid_extraction_settings_name_the_value_and_the_valid_range(field, value):
    with pytest.raises(ValueError, match=rf"{field}={value!r} is invalid: must be"):
        ExtractionSettings(**{field: value})


def _ffpp_tree(root: Path) -> Path:
    (root / "splits").mkdir(parents=True)
    for split in ("train", "val", "test"):
        (root / "splits" / f"{split}.json").write_text('[["000", "001"]]')
    return root


def test_an_unknown_ffpp_method_is_one_line_naming_the_valid_ones(tmp_path, capsys):
    from masm_lightning.cli import main

    root = _ffpp_tree(tmp_path / "ffpp")
    with pytest.raises(SystemExit) as exit_info:
        main(["preprocess", "--dataset", "ffpp", "--root", str(root), "--out", str(tmp_path / "out"),
              "--methods", "[DeepFakes]"])  # fmt: skip
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "FF++ method 'DeepFakes' is not one of Deepfakes, Face2Face, FaceShifter, FaceSwap" in err
    assert "did you mean 'Deepfakes'" in err and not (tmp_path / "out" / "manifest.csv").exists()


@pytest.mark.parametrize("where", ["file", "inside_a_file"])
def test_an_out_that_is_a_file_is_one_line(tmp_path, capsys, where):
    from masm_lightning.cli import main

    root = _ffpp_tree(tmp_path / "ffpp")
    taken = tmp_path / "taken.csv"
    taken.write_text("not a folder")
    out = taken if where == "file" else taken / "sub"
    with pytest.raises(SystemExit) as exit_info:
        main(["preprocess", "--dataset", "ffpp", "--root", str(root), "--out", str(out)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"--out '{out}'" in err and taken.read_text() == "not a folder"
