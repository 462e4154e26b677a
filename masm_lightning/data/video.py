"""Reading frames spread over a video (PyAV), or one image, as upright RGB arrays."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from .indexers import IMAGE_SUFFIXES

__all__ = ["read_frames", "sample_indices"]


def sample_indices(total: int, count: int) -> list[int]:
    """``count`` frame indices spread uniformly over ``total`` frames (centres of equal segments), never the
    first K; all frames when the video is shorter."""
    if total <= 0:
        return []
    if total <= count:
        return list(range(total))
    return [int((i + 0.5) * total / count) for i in range(count)]


def read_frames(path: Path, count: int, decode_threads: int = 0) -> tuple[list[int], list[np.ndarray], str]:
    """Read ``count`` frames spread over the video as upright RGB arrays; returns (indices, frames, status).

    An image file is one frame. Videos are read with PyAV: one pass over the packets (no decoding) gives the
    exact frame count (OpenCV's is an estimate from the header) and the group-of-pictures layout; the decoding
    pass then skips groups without a sampled frame and never decodes a non-reference frame that is not sampled —
    no other frame depends on it, so the sampled frames are bit-identical to decoding everything (tested on open
    and closed groups of pictures). Containers whose timestamps are not in display order (AVI) are decoded whole.
    Status: ok, unreadable, empty. ``decode_threads``: FFmpeg's decoding threads (0: one per core); 1 when
    several videos are decoded at once, which on a CPU scales better than threads inside one decoder.
    """
    if path.suffix.lower() in IMAGE_SUFFIXES:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        return ([0], [cv2.cvtColor(image, cv2.COLOR_BGR2RGB)], "ok") if image is not None else ([], [], "unreadable")

    def decode(layout: list[tuple[int | None, bool]], by_timestamp: bool) -> dict[int, np.ndarray] | None:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if stream.codec_context is None:  # no decoder for this codec
                raise OSError(f"{path}: no decoder for its video stream")
            stream.thread_type = "SLICE" if decode_threads == 1 else "AUTO"
            stream.codec_context.thread_count = decode_threads
            return _decode_sample(container, stream, layout, count, by_timestamp)

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return [], [], "unreadable"
            layout = [(p.pts, p.is_keyframe) for p in _packets(container)]
            display_order = "avi" not in container.format.name  # AVI stores decoding-order timestamps
        if not layout:
            return [], [], "empty"
        timestamps = [pts for pts, _ in layout]
        by_timestamp = display_order and None not in timestamps and len(set(timestamps)) == len(timestamps)
        got = decode(layout, by_timestamp)
        if got is None:  # timestamps turned out not to be in display order: decode everything, count frames
            got = decode(layout, False)
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
    container: Any, stream: Any, layout: list[tuple[int | None, bool]], count: int, by_timestamp: bool
) -> dict[int, np.ndarray] | None:
    """Decode the frames :func:`sample_indices` picks (index = rank in display order) from packets laid out as
    ``layout`` (presentation timestamp, keyframe) in decoding order. ``by_timestamp``: frames are found by their
    timestamps, and unneeded packets are skipped; otherwise everything is decoded and frames are counted. Returns
    None when the timestamps of the decoded frames are not increasing (they are not display order)."""
    if by_timestamp:
        timed = [(pts, key) for pts, key in layout if pts is not None]  # all of them: read_frames checked
        ranked = sorted(pts for pts, _ in timed)
        wanted = {ranked[i]: i for i in sample_indices(len(ranked), count)}  # timestamp → frame index
        skip = _groups_to_skip(timed, set(wanted))
    else:
        wanted = {i: i for i in sample_indices(len(layout), count)}  # output position → frame index
        skip = set()
    context = stream.codec_context
    got: dict[int, np.ndarray] = {}
    shown, last_pts = 0, None

    def keep(frames: Any) -> bool:
        nonlocal shown, last_pts
        for frame in frames:
            if by_timestamp:
                if frame.pts is None or (last_pts is not None and frame.pts <= last_pts):
                    return False
                key, last_pts = frame.pts, frame.pts
            else:
                key, shown = shown, shown + 1
            if key in wanted:
                image = frame.to_ndarray(format="rgb24")
                turns = round((frame.rotation or 0) / 90) % 4  # phone videos: upright, as players show them
                got[wanted[key]] = np.ascontiguousarray(np.rot90(image, turns))
        return True

    skipping = False
    for position, packet in enumerate(_packets(container)):
        if position in skip:
            skipping = True
            continue
        if skipping:  # resuming at a keyframe after skipped groups: drain and reset the decoder first, or an
            skipping = False  # open group's keyframe meets stale reference state and yields nothing
            try:
                if not keep(context.decode(None)):
                    return None
            except av.FFmpegError:
                pass
            context.flush_buffers()
        if by_timestamp:
            context.skip_frame = "DEFAULT" if packet.pts in wanted else "NONREF"
        try:
            if not keep(packet.decode()):
                return None
        except av.FFmpegError:  # a corrupt packet: its frame is lost, the rest may still decode
            continue
        if len(got) == len(wanted):
            return got
    try:
        if not keep(context.decode(None)):  # frames still inside the decoder
            return None
    except av.FFmpegError:
        pass
    return got


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
