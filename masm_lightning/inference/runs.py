"""``detect`` runs: many inputs scored with a :class:`~masm_lightning.inference.detector.Detector`, written as they
finish, resumed after an interruption, split into shards.

Every input gets one record — path, kind, status, score, decision, frames, detail — written to the output file
as soon as it is done (CSV rows appended, or the JSON list rewritten atomically), so an interrupted run keeps what
it finished. The statuses are the detector's (:mod:`masm_lightning.inference.detector`).

**Resuming.** Beside the output, ``<out>.stamp.json`` (an :class:`~masm_lightning.io.Stamp`) records the digest of
the model's files and of every setting that changes a result (:meth:`Detector.fingerprint`). Rerun with the same
``out`` and the same stamp, the inputs it already holds a final record for (anything but ``missing`` and
``error``) are kept, not scored again; with another model or other settings the output starts over. When the run
completes, the file is rewritten in input order.

**Shards.** ``shard i`` of ``num_shards N`` scores every N-th input of the sorted input list from the i-th (the
partition ``preprocess`` uses) and writes ``<out stem>.shard<i>-of-<N><suffix>``, so a job array can share one
command line; the shards' files together hold every input once.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..errors import InvalidInputError
from ..io import Stamp, check_shard, shard_inputs, write_atomic, write_csv
from .detector import (
    SCORED,
    Classifier,
    ConfidentRule,
    Detector,
    DetectorOptions,
    Result,
    aggregate,
    expand_inputs,
    load_classifier,
)

__all__ = [
    "Classifier",
    "ConfidentRule",
    "DetectorOptions",
    "aggregate",
    "detect",
    "load_classifier",
    "shard_inputs",
    "shard_output",
]

FIELDS = ("path", "kind", "status", "score", "decision", "frames", "detail", "frame_indices", "frame_scores")
RETRIED = ("missing", "error")  # statuses a resumed run tries again (the file may have appeared, the error passed)


def shard_output(out: Path, shard: int, num_shards: int) -> Path:
    """The output file of one shard: ``results.csv`` → ``results.shard0-of-4.csv`` (the file itself for 1)."""
    return out if num_shards == 1 else out.with_name(f"{out.stem}.shard{shard}-of-{num_shards}{out.suffix}")


def _parse(row: dict[str, Any]) -> dict[str, Any]:
    """A record as read back from CSV (all strings) with its numbers and lists restored."""
    record = dict(row)
    if isinstance(record.get("score"), str) and record["score"]:
        record["score"] = float(record["score"])
    if isinstance(record.get("frames"), str):
        record["frames"] = int(record["frames"] or 0)
    for name, kind in (("frame_indices", int), ("frame_scores", float)):
        if isinstance(record.get(name), str):
            record[name] = [kind(v) for v in record[name].split()]
    return record


def _read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a previous run's output; a CSV row cut by a kill (no final newline) is dropped."""
    try:
        text = path.read_text()
    except OSError:
        return []
    if path.suffix.lower() == ".json":
        try:
            records = json.loads(text)
        except ValueError:
            return []
        return [r for r in records if isinstance(r, dict) and "path" in r] if isinstance(records, list) else []
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    return [_parse(r) for r in csv.DictReader(text.splitlines())]


class _Output:
    """Writes records as they come: CSV rows appended and flushed, or the JSON list rewritten atomically."""

    def __init__(self, path: Path | None, per_frame: bool, kept: Sequence[dict[str, Any]] = ()) -> None:
        self.path, self.per_frame = path, per_frame
        self.fields = FIELDS if per_frame else FIELDS[:-2]
        self.records: list[dict[str, Any]] = []
        self._file: Any = None
        if path is None:
            return
        if path.suffix.lower() == ".csv":
            write_csv(path, map(self._flat, kept), self.fields)  # what is kept, atomically, then appended to
            self._file = path.open("a", newline="")
            self._csv = csv.DictWriter(self._file, fieldnames=self.fields)
        self.records = [{k: r.get(k, "") for k in self.fields} for r in kept]
        if self._file is None:
            write_atomic(path, json.dumps(self.records, indent=1))

    @staticmethod
    def _flat(record: dict[str, Any]) -> dict[str, Any]:
        return {k: " ".join(map(str, v)) if isinstance(v, list) else v for k, v in record.items()}

    def add(self, record: dict[str, Any]) -> None:
        record = {k: record.get(k, "") for k in self.fields}
        self.records.append(record)
        if self._file is not None:
            self._csv.writerow(self._flat(record))
            self._file.flush()
        elif self.path is not None:
            write_atomic(self.path, json.dumps(self.records, indent=1))

    def finish(self, records: Sequence[dict[str, Any]]) -> None:
        """The complete run, rewritten in input order."""
        self.close()
        if self.path is None:
            return
        if self.path.suffix.lower() == ".csv":
            write_csv(self.path, map(self._flat, records), self.fields)
        else:
            write_atomic(self.path, json.dumps([{k: r.get(k, "") for k in self.fields} for r in records], indent=1))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def detect(
    paths: Sequence[str | Path],
    ckpt: str | Path,
    options: DetectorOptions | None = None,
    out: str | Path | None = None,
    device: str | None = None,
    per_frame: bool = False,
    shard: int = 0,
    num_shards: int = 1,
    resume: bool = True,
    detector: Detector | None = None,
    on_result: Callable[[Result], None] | None = None,
    **fields: Any,
) -> list[dict[str, Any]]:
    """Score videos, images and folders (recursive); return one record per input, in input order.

    Args:
        paths: video files, image files or folders.
        ckpt: a checkpoint written by ``fit``, or a folder written by ``export``.
        options: how to score (:class:`~masm_lightning.inference.detector.DetectorOptions`: frames, aggregation,
            threshold, batch size, face crop, workers, chunk size, compile); ``fields`` replace some of them
            (``frames=8``).
        out: write the records here as they are computed (``.json`` or ``.csv``); rerun to resume.
        device: cpu or cuda (default: cuda when available); MTCNN runs there too.
        per_frame: add each record's frame indices and frame scores.
        shard: this run's shard, in [0, num_shards).
        num_shards: number of shards (e.g. a job array); each writes its own output file.
        resume: keep the records of a previous run with the same ``out``, model and settings.
        detector: an already loaded detector to use instead of loading ``ckpt`` (its own options apply).
        on_result: called with every :class:`~masm_lightning.inference.detector.Result` scored in this run, as it comes
            (``detect --explain`` explains them afterwards).

    Raises:
        CheckpointError: ``ckpt`` is neither a checkpoint nor an export folder.
        InvalidInputError: a bad option (the message names it).
    """
    options = DetectorOptions.of(options, **fields)
    if out is not None and Path(out).suffix.lower() not in (".json", ".csv"):
        raise InvalidInputError(f"--out {str(out)!r}: the output must end in .json or .csv")
    check_shard(shard, num_shards)
    if detector is None:  # before the output: a bad checkpoint or option must not clobber old results
        detector = Detector.load(ckpt, device, options)
    inputs = expand_inputs(paths)
    if num_shards > 1:
        inputs = shard_inputs(inputs, shard, num_shards, key=lambda item: str(item[0]))
    target = shard_output(Path(out), shard, num_shards) if out is not None else None
    done: dict[str, dict[str, Any]] = {}
    if target is not None:
        stamp = Stamp(target.with_name(target.name + ".stamp.json"))
        expected = {"model_and_settings": detector.fingerprint(), "per_frame": per_frame}
        if resume and stamp.matches(expected):
            done = {r["path"]: r for r in _read_records(target) if r.get("status") not in RETRIED}
        else:
            stamp.clear()  # the output about to be written is not the old one's
        mine = {str(path) for path, _, status in inputs if status is None}
        done = {p: r for p, r in done.items() if p in mine}
        kept = [done[str(path)] for path, _, _ in inputs if str(path) in done]
        output = _Output(target, per_frame, kept)
        stamp.write(expected)
    else:
        output = _Output(None, per_frame)
    if done:
        print(f"resuming: {len(done)} of {len(inputs)} inputs already scored in {target}")
    todo = [path for path, _, status in inputs if status is None and str(path) not in done]
    fresh: dict[str, dict[str, Any]] = {
        str(path): Result.unscored(path, kind, status).to_record(per_frame)
        for path, kind, status in inputs
        if status is not None
    }
    for record in fresh.values():
        output.add(record)
    try:
        results = detector.score_many(todo)
        for result in tqdm(results, total=len(todo), unit="input", desc="detect", disable=None):
            if on_result is not None:
                on_result(result)
            record = _record(result, per_frame)
            fresh[result.path] = record
            output.add(record)
    finally:
        output.close()
    records = [fresh.get(str(path)) or done[str(path)] for path, _, _ in inputs]
    output.finish(records)
    return records


def _record(result: Result, per_frame: bool) -> dict[str, Any]:
    record = result.to_record(per_frame)
    if result.status not in SCORED:
        record["score"], record["decision"] = "", ""
    return record
