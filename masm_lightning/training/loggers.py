"""A CSV logger that survives a resume.

``fit --ckpt_path <run>/checkpoints/last.ckpt`` continues in the checkpoint's own run folder (the CLI sets the
logger's ``version``), so that the run keeps one ``metrics.csv`` and its best checkpoint remembers the best score
so far. Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it opens a folder again, and writes rows
every 100 steps, so a killed run loses what it logged since the last write. This one keeps the file, replaces the
rows a resumed run logs again, and writes every row when it is logged.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from typing_extensions import override

from ..errors import InvalidInputError
from ..io import write_csv

__all__ = ["CSVLogger"]


def _step(row: dict[str, str]) -> int | None:
    try:
        return int(float(row["step"]))
    except (KeyError, ValueError):
        return None


class ContinuingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` is continued.

    The rows it holds at steps at or after the first step this writer logs are dropped, because a resumed run
    logs those steps again (they come from the part of the killed run after its checkpoint): a run killed and
    resumed ends with the same file as one never stopped. Rows before that step are kept as they are.
    """

    def __init__(self, log_dir: str) -> None:
        self._previous: list[dict[str, str]] | None = None
        self._previous_keys: list[str] = []
        super().__init__(log_dir=log_dir)

    @override
    def _check_log_dir_exists(self) -> None:  # Lightning's deletes metrics.csv here
        if not self._fs.isfile(self.metrics_file_path):
            return
        try:
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                text = f.read()
            if not text.endswith("\n"):  # the last write was cut short by a kill: its partial row is dropped
                text = text[: text.rfind("\n") + 1]
            reader = csv.DictReader(io.StringIO(text))
            rows = [row for row in reader if None not in row and None not in row.values()]  # whole rows only
        except (UnicodeDecodeError, csv.Error) as error:
            raise InvalidInputError(
                f"{self.metrics_file_path} is not a metrics CSV ({error}): move it away to continue the run in "
                "this folder"
            ) from error
        self._previous_keys = list(reader.fieldnames or [])
        self._previous = [{k: v for k, v in row.items() if v != ""} for row in rows if _step(row) is not None]

    @override
    def save(self) -> None:
        if self._previous is not None and self.metrics:
            first = min(int(m["step"]) for m in self.metrics)
            kept = [row for row in self._previous if (_step(row) or 0) < first]
            self.metrics_keys = sorted(set(self._previous_keys).union(*(row.keys() for row in self.metrics)))
            write_csv(self.metrics_file_path, kept, self.metrics_keys)
            self._previous = None
        super().save()


class CSVLogger(LightningCSVLogger):
    """Lightning's ``CSVLogger`` (same arguments and files: ``<save_dir>/<name>/version_N/metrics.csv`` and
    ``hparams.yaml``) for runs that may be resumed: a folder opened again keeps its ``metrics.csv``
    (:class:`ContinuingWriter`), and rows are written as they are logged (``flush_logs_every_n_steps=1``), so a run
    killed at any moment has every row it logged on disk."""

    def __init__(
        self,
        save_dir: str | Path,
        name: str | None = "lightning_logs",
        version: int | str | None = None,
        prefix: str = "",
        flush_logs_every_n_steps: int = 1,
    ) -> None:
        super().__init__(
            save_dir, name=name, version=version, prefix=prefix, flush_logs_every_n_steps=flush_logs_every_n_steps
        )

    @property
    @override
    @rank_zero_experiment
    def experiment(self) -> ContinuingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ContinuingWriter(log_dir=self.log_dir)
        return self._experiment  # type: ignore[return-value]
