"""Long end-to-end commands that run in a child process beside the suite.

The suite runs one test at a time, and most tests keep at most one of the machine's cores busy. A few slow tests
each spend minutes in one or two commands (the demo's fit and test, the study's ``--quick`` run). Those commands run
in child processes on one thread, one job after another, from the moment collection shows a test needs them; their
tests (marked ``@pytest.mark.background("<job>")``, run last) wait for the job and check what it wrote and printed.
A test run on its own starts its job when it asks for it. Nothing about the commands changes: they are the ones a
user types, in a fresh process, in a temporary folder.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from masm_lightning.training.weights import CACHE_ENV

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
DEMO = (PYTHON, "-m", "masm_lightning", "{}", "--config", str(ROOT / "configs" / "demo.yaml"))
DEMO_BEST = str(Path("outputs", "demo", "demo", "version_0", "checkpoints", "best.ckpt"))  # the fit's, in its folder


def _demo(command: str, *extra: str) -> tuple[str, ...]:
    return (*(part.format(command) for part in DEMO), "--trainer.enable_progress_bar", "false", *extra)


# The import probes the suite asks about: one fresh interpreter answers all of them at once.
FRESH_IMPORT_PROBES = (
    "masm_lightning:Detector",
    "masm_lightning.adapters",
    "masm_lightning.sharing.export",
    "masm_lightning.sharing.formats",
    "masm_lightning.sharing.checkpoint",
    "masm_lightning.data.settings",
)


def _study(*extra: str) -> list[str]:
    return [PYTHON, str(ROOT / "benchmarks" / "ablation.py"), "--quick", "--out", "study", *extra]


# name -> the commands, run in order in the job's own empty folder (the first that fails ends the job)
JOBS: dict[str, tuple[tuple[str, ...], ...]] = {
    # `make demo`, as it runs it: fit, then test the best checkpoint.
    "demo": (_demo("fit"), _demo("test", "--ckpt_path", DEMO_BEST)),
    # The study's structure check with a repeat of one run, then the same command again (it must run nothing).
    "quick_study": (tuple(_study("--verify")), tuple(_study())),
    # Which modules a fresh interpreter holds after importing each probe (tests/fresh_imports.py), all in one.
    "fresh_imports": ((PYTHON, "-m", "tests.fresh_imports", *FRESH_IMPORT_PROBES),),
}


@dataclasses.dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    returncode: int
    output: str  # stdout and stderr, interleaved as written

    def check(self) -> str:
        """The output; a failed command fails the test with the end of what it printed."""
        if self.returncode != 0:
            raise AssertionError(f"{' '.join(self.argv)} exited {self.returncode}:\n{self.output[-6000:]}")
        return self.output


@dataclasses.dataclass(frozen=True)
class Finished:
    folder: Path
    commands: tuple[Command, ...]


class Runner:
    """Runs queued jobs one at a time in a worker thread; :meth:`result` waits for one."""

    def __init__(self) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._done: dict[str, threading.Event] = {}
        self._results: dict[str, Finished] = {}
        self._folders: list[Path] = []
        self._process: subprocess.Popen[str] | None = None
        self._stopping = False
        self._lock = threading.Lock()  # no command starts once stop() has begun
        self._thread = threading.Thread(target=self._work, name="background-jobs", daemon=True)
        self._thread.start()

    def start(self, names: Iterable[str]) -> None:
        for name in names:
            if name not in JOBS:
                raise KeyError(f"no background job {name!r}; known: {', '.join(JOBS)}")
            if name not in self._done:
                self._done[name] = threading.Event()
                self._queue.put(name)

    def busy(self) -> bool:
        """Whether a queued job has not finished yet."""
        return any(not event.is_set() for event in self._done.values())

    def result(self, name: str, timeout: float = 1800) -> Finished:
        self.start([name])
        if not self._done[name].wait(timeout):
            raise TimeoutError(f"background job {name!r} did not finish within {timeout:.0f} s")
        return self._results[name]

    def stop(self) -> None:
        """End the running job (if any), forget the queue and remove the jobs' folders."""
        with self._lock:
            self._stopping = True
            process = self._process
        self._queue.put(None)
        if process is not None and process.poll() is None:
            process.kill()
        self._thread.join(timeout=30)
        for folder in self._folders:
            shutil.rmtree(folder, ignore_errors=True)

    def _work(self) -> None:
        while (name := self._queue.get()) is not None and not self._stopping:
            folder = Path(tempfile.mkdtemp(prefix=f"masm_{name}_"))
            self._folders.append(folder)
            commands: list[Command] = []
            try:
                for argv in JOBS[name]:
                    commands.append(self._run(argv, folder))
                    if commands[-1].returncode != 0 or self._stopping:
                        break
            except Exception as error:  # reported to the test that waits for this job
                commands.append(Command(JOBS[name][len(commands)], -1, f"could not run: {error!r}"))
            self._results[name] = Finished(folder, tuple(commands))
            self._done[name].set()

    def _run(self, argv: Sequence[str], folder: Path) -> Command:
        # One thread: the suite uses the other core. OMP_NUM_THREADS reaches torch, OpenCV and the data workers.
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])  # tests.*
        env[CACHE_ENV] = str(folder / "weights_cache")  # converted weights: never into the user's ~/.cache
        env.pop("PYTEST_CURRENT_TEST", None)
        with self._lock:
            if self._stopping:
                return Command(tuple(argv), -1, "not run: the test session ended")
            process = self._process = subprocess.Popen(
                list(argv), cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        output, _ = process.communicate()
        return Command(tuple(argv), process.returncode, output)
