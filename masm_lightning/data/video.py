"""Reading frames spread over a video (PyAV), or one image, as upright RGB arrays; recognising a file by content.

Two ways in: :func:`read_frames` returns every sampled frame at once (``preprocess``, a few dozen frames), and
:func:`open_video` + :meth:`VideoStream.frames` yield them one at a time as they are decoded (``detect``, any
number of frames with a bounded number in memory). Both are the same code: the same frames, bit for bit.
"""

from __future__ import annotations

import os
import queue
import re
import sys
import threading
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import av
import cv2
import numpy as np

__all__ = [
    "MAX_IMAGE_PIXELS",
    "Frame",
    "ImageFile",
    "VideoStream",
    "chunks_ahead",
    "open_image",
    "open_video",
    "read_frames",
    "read_image",
    "sample_indices",
    "sniff",
]

MediaKind = Literal["image", "video", "text", "unknown"]

# File signatures (magic numbers): what a file is, whatever its name says.
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*")
_VIDEO_MAGIC = (b"\x1aE\xdf\xa3", b"FLV", b"OggS", b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3", b"0&\xb2u\x8ef\xcf\x11")


def sniff(path: str | Path) -> MediaKind:
    """What ``path`` holds, from its first bytes: ``image`` (PNG, JPEG, BMP, TIFF, WebP), ``video`` (MP4/MOV/3GP,
    Matroska/WebM, AVI, FLV, Ogg, MPEG-PS/TS, ASF/WMV), ``text`` (a readable text file) or ``unknown``.

    Raises:
        OSError: the file cannot be read.
    """
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(_IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return "image"
    if (
        head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip")
        or head.startswith(_VIDEO_MAGIC)
        or (head[:4] == b"RIFF" and head[8:12] == b"AVI ")
        or (len(head) > 188 and head[0] == 0x47 and head[188] == 0x47)  # MPEG transport stream packets
    ):
        return "video"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:  # a multi-byte character cut at 512 bytes still reads as text
        text = head[:-4].decode("utf-8", errors="strict") if _utf8_prefix(head[:-4]) else ""
    if text and all(c.isprintable() or c in "\r\n\t\f" for c in text):
        return "text"
    return "unknown"


def _reason(error: av.FFmpegError) -> str:
    """FFmpeg's reason, without the file name it appends (a server's temporary path, in the web app)."""
    return str(error.strerror or type(error).__name__)


def _utf8_prefix(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# Images larger than this are refused before decoding (a 50000×50000 PNG of a few MB would need 7.5 GB as RGB).
MAX_IMAGE_PIXELS = 2**27  # 134 megapixels: 400 MB as RGB; a 100-megapixel camera's photos pass
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # a marker in entropy-coded data (not stuffing, RSTn)
_STDERR = threading.Lock()


@dataclass(frozen=True)
class ImageFile:
    """An image file's RGB array and whether the file ends before its image data does (``truncated``: the array
    holds what decodes, the rest grey)."""

    image: np.ndarray
    truncated: bool = False


def _jpeg_layout(data: bytes) -> tuple[tuple[int, int] | None, bool]:
    """((width, height) or None, complete) of a JPEG, from its markers: complete when an end-of-image marker is
    reached (data appended after it, as some cameras do, is ignored)."""
    size, pos = None, 2
    while pos + 2 <= len(data):
        if data[pos] != 0xFF:
            return size, False  # not a marker where one must be: damaged
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:
            return size, True
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2
            continue
        if pos + 4 > len(data):
            break
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker in _JPEG_SOF and pos + 9 <= len(data):
            size = (int.from_bytes(data[pos + 7 : pos + 9], "big"), int.from_bytes(data[pos + 5 : pos + 7], "big"))
        pos += 2 + length
        if marker == 0xDA:  # start of scan: entropy-coded data up to the next marker
            found = _JPEG_MARKER.search(data, pos)
            if found is None:
                return size, False
            pos = found.start()
    return size, False


def _png_layout(data: bytes) -> tuple[tuple[int, int] | None, bool]:
    """((width, height) or None, complete) of a PNG: complete when its chunks reach ``IEND``."""
    size = (int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")) if len(data) >= 24 else None
    pos = 8
    while pos + 12 <= len(data):
        length, kind = int.from_bytes(data[pos : pos + 4], "big"), data[pos + 4 : pos + 8]
        pos += 12 + length
        if kind == b"IEND":
            return size, pos <= len(data)
    return size, False


def open_image(path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> ImageFile:
    """An image file (PNG, JPEG, BMP, TIFF, WebP) as an upright RGB array, checked before decoding: its size
    against ``max_pixels`` and, for JPEG and PNG, whether the file holds all of its image data.

    A truncated JPEG decodes partially (``truncated``; the decoder's own warning is kept off stderr); a truncated
    PNG does not decode at all.

    Raises:
        OSError: one line saying why it cannot be used (too large, truncated PNG, does not decode).
    """
    data = Path(path).read_bytes()
    size, complete, kind = None, True, ""
    if data.startswith(b"\xff\xd8"):
        size, complete = _jpeg_layout(data)
        kind = "JPEG"
    elif data.startswith(b"\x89PNG"):
        size, complete = _png_layout(data)
        kind = "PNG"
    if size is not None and size[0] * size[1] > max_pixels:
        raise OSError(
            f"an image of {size[0]}×{size[1]} pixels, larger than the limit of {max_pixels / 1e6:.0f} megapixels"
        )
    if not complete and kind == "PNG":
        raise OSError(f"a truncated PNG (the file ends inside its image data, after {len(data)} bytes)")
    buffer = np.frombuffer(data, np.uint8)
    try:
        if complete:
            image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
        else:  # an end-of-image marker appended, as libjpeg's file reader does at a premature end
            buffer = np.frombuffer(data + b"\xff\xd9", np.uint8)
            with _quiet_stderr():  # libjpeg's "Premature end of JPEG file": we report it ourselves
                image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    except cv2.error:  # OpenCV's own limits (formats whose size is not checked above)
        raise OSError("an image that cannot be decoded (too large or damaged)") from None
    if image is None:
        raise OSError("an image file that does not decode")
    return ImageFile(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), truncated=not complete)


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 to /dev/null for the block (the C libraries' messages), one thread at a time."""
    with _STDERR:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            with open(os.devnull, "wb") as null:
                os.dup2(null.fileno(), 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def read_image(path: str | Path) -> np.ndarray | None:
    """An image file as an RGB array (what decodes of a truncated one), or None when it cannot be used
    (:func:`open_image` says why)."""
    try:
        return open_image(path).image
    except OSError:
        return None


def sample_indices(total: int, count: int) -> list[int]:
    """``count`` frame indices spread uniformly over ``total`` frames (centres of equal segments), never the
    first K; all frames when the video is shorter."""
    if total <= 0:
        return []
    if total <= count:
        return list(range(total))
    return [int((i + 0.5) * total / count) for i in range(count)]


@dataclass(frozen=True)
class Frame:
    """One sampled frame: its index (rank in display order), its time in seconds from the first frame (None when
    the video has no timing) and the upright RGB image."""

    index: int
    time: float | None
    image: np.ndarray


class VideoStream:
    """An opened video: the exact number of frames it holds, what its header promises, and its sampled frames.

    Opening makes one pass over the packets (no decoding): it gives the exact frame count (``frames``; OpenCV's is
    an estimate from the header) and the group-of-pictures layout. ``promised`` is the header's frame count (0 when
    the container does not say, e.g. Matroska); ``truncated`` is true when fewer frames can be read than promised
    (a cut download whose index sits at the front).
    """

    def __init__(
        self,
        path: Path,
        layout: list[tuple[int | None, bool]],
        promised: int,
        display_order: bool,
        fps: float | None,
        time_base: float | None,
        decode_threads: int,
    ) -> None:
        self.path, self.layout, self.promised, self.fps = path, layout, promised, fps
        self.time_base, self.decode_threads = time_base, decode_threads
        self.width = self.height = 0  # coded frame size in pixels, from the stream's parameters
        timestamps = [pts for pts, _ in layout]
        self.by_timestamp = display_order and None not in timestamps and len(set(timestamps)) == len(timestamps)

    @property
    def frames(self) -> int:
        return len(self.layout)

    @property
    def truncated(self) -> bool:
        return 0 < self.frames < self.promised

    def frames_sampled(self, count: int) -> Iterator[Frame | None]:
        """Decode the frames :func:`sample_indices` picks, yielding each as soon as it is decoded, in display order.

        Only the groups of pictures holding a sampled frame are decoded, and a non-reference frame only when it is
        sampled: no other frame depends on it, so the frames are bit-identical to decoding everything (tested on
        open and closed groups of pictures). Yields ``None`` once, then starts over decoding every frame, if the
        timestamps turn out not to be in display order: what was yielded before must be discarded.

        Raises:
            OSError: the file stops being readable (FFmpeg's error in the message).
        """
        modes = (True, False) if self.by_timestamp else (False,)
        for by_timestamp in modes:
            try:
                with av.open(str(self.path)) as container:
                    stream = container.streams.video[0]
                    if stream.codec_context is None:  # no decoder for this codec
                        raise OSError(f"{self.path}: no decoder for its video stream")
                    stream.thread_type = "SLICE" if self.decode_threads == 1 else "AUTO"
                    stream.codec_context.thread_count = self.decode_threads
                    first = min((pts for pts, _ in self.layout if pts is not None), default=0)
                    complete = yield from _decode_sample(
                        container, stream, self.layout, count, by_timestamp, self._timer(by_timestamp, first)
                    )
            except av.FFmpegError as error:
                raise OSError(f"{self.path}: {_reason(error)}") from error
            if complete:
                return
            yield None

    def _timer(self, by_timestamp: bool, first: int) -> Any:
        if by_timestamp and self.time_base:
            return lambda index, pts: round((pts - first) * self.time_base, 6)
        if self.fps:
            return lambda index, pts: round(index / self.fps, 6)
        return lambda index, pts: None


def open_video(path: str | Path, decode_threads: int = 0) -> VideoStream:
    """Open a video for :meth:`VideoStream.frames_sampled`.

    ``decode_threads``: FFmpeg's decoding threads (0: one per core); 1 when several videos are decoded at once,
    which on a CPU scales better than threads inside one decoder.

    Raises:
        OSError: not a video FFmpeg can read (no video stream, unknown format, unreadable file).
    """
    path = Path(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise OSError(f"{path}: no video stream")
            stream = container.streams.video[0]
            layout = [(p.pts, p.is_keyframe) for p in _packets(container)]
            display_order = "avi" not in container.format.name  # AVI stores decoding-order timestamps
            fps = float(stream.average_rate) if stream.average_rate else None
            time_base = float(stream.time_base) if stream.time_base else None
            promised = int(stream.frames or 0)
            size = (int(stream.width or 0), int(stream.height or 0))
    except av.FFmpegError as error:
        raise OSError(f"{path}: {_reason(error)}") from error
    video = VideoStream(path, layout, promised, display_order, fps, time_base, decode_threads)
    video.width, video.height = size
    return video


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


def chunks_ahead(frames: Iterator[Frame | None], size: int, depth: int = 1) -> Iterator[list[Frame] | None]:
    """Group ``frames`` into lists of ``size``, decoded by a thread up to ``depth`` chunks ahead of the consumer
    (FFmpeg releases the GIL, so decoding overlaps the model). ``None`` (start over) passes through. At most
    ``depth + 2`` chunks exist at once: the one consumed, those queued, the one being filled."""
    ahead: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                ahead.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def fill() -> None:
        try:
            chunk: list[Frame] = []
            for frame in frames:
                if frame is None:
                    chunk = []
                    if not put(None):
                        return
                    continue
                chunk.append(frame)
                if len(chunk) == size:
                    if not put(chunk):
                        return
                    chunk = []
            if chunk and not put(chunk):
                return
            put(_END)
        except BaseException as error:  # handed to the consumer, which re-raises it where it is handled
            put(_Failure(error))

    thread = threading.Thread(target=fill, name="detect-decode", daemon=True)
    thread.start()
    try:
        while True:
            item = ahead.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
            del item  # not held while the next chunk is awaited
    finally:
        stop.set()
        thread.join()


def read_frames(path: Path, count: int, decode_threads: int = 0) -> tuple[list[int], list[np.ndarray], str]:
    """Read ``count`` frames spread over the video as upright RGB arrays; returns (indices, frames, status).

    An image file (recognised by content, :func:`sniff`) is one frame. Videos are read as by
    :meth:`VideoStream.frames_sampled`. Status: ok, unreadable, empty.
    """
    try:
        if sniff(path) == "image":
            image = read_image(path)
            return ([0], [image], "ok") if image is not None else ([], [], "unreadable")
        video = open_video(path, decode_threads)
        got: dict[int, np.ndarray] = {}
        for frame in video.frames_sampled(count):
            if frame is None:
                got.clear()
            else:
                got[frame.index] = frame.image
    except (av.FFmpegError, OSError):
        return [], [], "unreadable"
    if not got:
        return [], [], "empty"
    indices = sorted(got)
    return indices, [got[i] for i in indices], "ok"


def _packets(container: Any) -> Any:
    """The video packets with data, up to the first demuxing error (a truncated file keeps what came before)."""
    try:
        for packet in container.demux(container.streams.video[0]):
            if packet.size:
                yield packet
    except av.FFmpegError:
        return


def _decode_sample(
    container: Any,
    stream: Any,
    layout: list[tuple[int | None, bool]],
    count: int,
    by_timestamp: bool,
    timer: Any,
) -> Generator[Frame, None, bool]:
    """Decode the frames :func:`sample_indices` picks (index = rank in display order) from packets laid out as
    ``layout`` (presentation timestamp, keyframe) in decoding order, yielding each when decoded. ``by_timestamp``:
    frames are found by their timestamps, and unneeded packets are skipped; otherwise everything is decoded and
    frames are counted. Returns False (as the generator's value) when the timestamps of the decoded frames are not
    increasing (they are not display order), True otherwise."""
    if by_timestamp:
        timed = [(pts, key) for pts, key in layout if pts is not None]  # all of them: VideoStream checked
        ranked = sorted(pts for pts, _ in timed)
        wanted = {ranked[i]: i for i in sample_indices(len(ranked), count)}  # timestamp → frame index
        skip = _groups_to_skip(timed, set(wanted))
    else:
        wanted = {i: i for i in sample_indices(len(layout), count)}  # output position → frame index
        skip = set()
    context = stream.codec_context
    found = 0
    shown, last_pts = 0, None

    def keep(frames: Any) -> list[Frame] | None:
        nonlocal shown, last_pts
        kept = []
        for frame in frames:
            if by_timestamp:
                if frame.pts is None or (last_pts is not None and frame.pts <= last_pts):
                    return None
                key, last_pts = frame.pts, frame.pts
            else:
                key, shown = shown, shown + 1
            if key in wanted:
                image = frame.to_ndarray(format="rgb24")
                turns = round((frame.rotation or 0) / 90) % 4  # phone videos: upright, as players show them
                index = wanted[key]
                kept.append(Frame(index, timer(index, frame.pts), np.ascontiguousarray(np.rot90(image, turns))))
        return kept

    def decoded(packet: Any) -> list[Frame] | None:
        try:
            return keep(context.decode(None) if packet is None else packet.decode())
        except av.FFmpegError:  # a corrupt packet: its frame is lost, the rest may still decode
            return []

    skipping = False
    for position, packet in enumerate(_packets(container)):
        if position in skip:
            skipping = True
            continue
        if skipping:  # resuming at a keyframe after skipped groups: drain and reset the decoder first, or an
            skipping = False  # open group's keyframe meets stale reference state and yields nothing
            drained = decoded(None)
            if drained is None:
                return False
            found += len(drained)
            yield from drained
            context.flush_buffers()
        if by_timestamp:
            context.skip_frame = "DEFAULT" if packet.pts in wanted else "NONREF"
        frames = decoded(packet)
        if frames is None:
            return False
        found += len(frames)
        yield from frames
        if found == len(wanted):
            return True
    rest = decoded(None)  # frames still inside the decoder
    if rest is None:
        return False
    yield from rest
    return True


def _groups_to_skip(layout: list[tuple[int, bool]], wanted: set[int]) -> set[int]:
    """Packet positions of the groups of pictures (keyframe to keyframe, decoding order) that hold no sampled
    frame and that no sampled frame may depend on (the leading frames of the next group, shown before its
    keyframe, can refer to this group)."""
    starts = [i for i, (_, key) in enumerate(layout) if key] or [0]
    if starts[0] != 0:
        starts.insert(0, 0)
    groups = [range(a, b) for a, b in zip(starts, [*starts[1:], len(layout)])]
    skip: set[int] = set()
    for g, group in enumerate(groups):
        if any(layout[i][0] in wanted for i in group):
            continue
        if g + 1 < len(groups):
            following = groups[g + 1]
            key_pts = layout[following[0]][0]
            if any(layout[i][0] in wanted and layout[i][0] < key_pts for i in following):
                continue
        skip.update(group)
    return skip
