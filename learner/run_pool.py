"""Train-and-score jobs (Table 2 rows, tuning grid points) side by side in worker processes.

The jobs of one ablation or one tuning sweep share a split and nothing else: each has its own variant,
model settings, seed-driven trainer and output folder, so running them in parallel changes the wall time
and not a figure. Every worker process uses `settings.threads` torch threads (1 by default), so N jobs
keep N cores busy; a single job (`jobs=1`) runs in this process, as before.

Workers get the split from one pickle that the parent writes next to the runs (and removes after):
rebuilding it would replay the whole log per worker, and a split is too large to send with each job.
Processes are spawned, not forked: a forked child inherits torch's thread pool state and hangs.

A finished row leaves `row.json` in its folder: every input that decides its figures (the variant's
full model config or the peer's recipe, the train settings, the split's window and sample rules, the
split's identity, the bootstrap). With `resume`, a row whose row.json equals the one this run would write is
read back instead of trained again, so a long ablation that was stopped goes on where it stopped; any
difference (a changed default, another seed, another log) trains the row again. row.json is removed
when a row starts and written after its eval.json, so it marks a row that finished.

One difference needs no training: the same training split scored on other test samples (another
`test_anchor`, learner/data.py). The model such a row saved is exactly the one it would train again, so
with `resume` a variant row whose inputs differ only there is re-scored from its checkpoint (seconds)
and its run.json is told the new test side, so that `xdm evaluate` on it gives the same figures.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import pickle
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from learner.data import OfflineData
from learner.model import config_for
from learner.offline import TrainSettings, evaluate, train_offline
from learner.trainer import dense_optimizer_for
from xdm.progress import progress_bar

VARIANT = "variant"  # an XDM/SDM variant of learner/model.py, trained by learner/offline.py
PEER = "peer"  # a torch-rechub peer of learner/peers.py
ROW_RECORD = "row.json"
_TIMING_KEYS = {"build_s"}  # in the split's summary, but not part of what the split is
_TEST_SIDE_KEYS = ("test_users", "test_anchor")  # in the split's summary; they decide no trained weight

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """One row to train and score: `name` keys the result, `model` is the variant or the peer name."""

    name: str
    model: str
    out_dir: Path
    kind: str = VARIANT
    model_overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JobResult:
    name: str
    evaluation: dict[str, Any]
    seconds: float  # the row's own wall time, when it was trained
    reused: bool = False  # read back from a finished row (resume), not trained by this run
    rescored: bool = False  # its saved model scored on this run's test samples (resume), not trained again


_worker_data: OfflineData | None = None  # the split, loaded once per worker process


def run_jobs(
    jobs: list[Job],
    data: OfflineData,
    settings: TrainSettings,
    n_boot: int,
    seed: int,
    workers: int = 1,
    progress: bool = True,
    on_done: Callable[[JobResult], None] | None = None,
    resume: bool = False,
) -> dict[str, JobResult]:
    """Train and score every job on `data`, `workers` at a time; results by job name, in job order.

    With `resume`, rows that already finished with the same inputs are read back (module docstring).
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    done = {}
    for job in jobs if resume else ():
        reused = (finished_row(job, data, settings, n_boot, seed)
                  or rescored_row(job, data, settings, n_boot, seed))
        if reused is not None:
            log.info("row rescored" if reused.rescored else "row reused",
                     extra={"row": job.name, "folder": str(job.out_dir)})
            done[job.name] = reused
            if on_done:
                on_done(reused)
    todo = [job for job in jobs if job.name not in done]
    if workers == 1 or len(todo) <= 1:
        for job in todo:
            done[job.name] = _run(job, data, settings, n_boot, seed, progress)
            if on_done:
                on_done(done[job.name])
    else:
        done.update(_run_in_pool(todo, data, settings, n_boot, seed, min(workers, len(todo)), progress, on_done))
    return {job.name: done[job.name] for job in jobs}


def row_record(job: Job, data: OfflineData, settings: TrainSettings, n_boot: int, seed: int) -> dict[str, Any]:
    """Every input that decides a row's figures, as the JSON that row.json holds (less its seconds)."""
    if job.kind == PEER:
        from learner.peers import recipe

        model: dict[str, Any] = {"peer": job.model, "recipe": recipe(job.model)}
        base = None
    else:
        model_cfg = config_for(job.model, **job.model_overrides)
        model = {"variant": job.model, "model_config": asdict(model_cfg)}
        base = model_cfg.base
    split = {k: v for k, v in data.summary().items() if k not in _TIMING_KEYS}
    record = {"kind": job.kind, **model, "train_settings": _settings_record(settings, base),
              "window_rules": asdict(data.split.windows), "sample_rules": asdict(data.split.samples),
              "split": split, "bootstrap": {"n_boot": n_boot, "seed": seed}}
    return json.loads(json.dumps(record))  # tuples as lists, as they read back


def _settings_record(settings: TrainSettings, base: str | None) -> dict[str, Any]:
    """The train settings that decide a row of this base (None: a peer): the dense optimiser as resolved for
    the base, and only where it is Adam. AdaGrad on every parameter is what every row had before the setting
    existed, so their row.json stays valid; a peer trains with its own recipe's optimiser (learner/peers.py)."""
    record = asdict(settings)
    choice, adam_lr = record.pop("dense_optimizer"), record.pop("adam_lr")
    if base is not None and dense_optimizer_for(choice, base) == "adam":
        record.update(dense_optimizer="adam", adam_lr=adam_lr)
    return record


def _stored(path: Path) -> dict[str, Any] | None:
    """A JSON file a finished row left, or None when it is missing or unreadable (train the row)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def finished_row(job: Job, data: OfflineData, settings: TrainSettings, n_boot: int, seed: int) -> JobResult | None:
    """The row in job.out_dir if it finished with exactly these inputs, else None (train it)."""
    out = Path(job.out_dir)
    stored, evaluation = _stored(out / ROW_RECORD), _stored(out / "eval.json")
    if stored is None or evaluation is None:
        return None
    seconds = stored.pop("seconds", 0.0)
    if stored != row_record(job, data, settings, n_boot, seed):
        return None
    return JobResult(job.name, evaluation, seconds, reused=True)


def rescored_row(job: Job, data: OfflineData, settings: TrainSettings, n_boot: int, seed: int) -> JobResult | None:
    """The variant row in job.out_dir re-scored on `data`'s test samples, if only the test side differs."""
    out = Path(job.out_dir)
    if job.kind != VARIANT:
        return None  # a peer keeps no model to score again
    stored, run = _stored(out / ROW_RECORD), _stored(out / "run.json")
    if stored is None or run is None:
        return None
    trained_s = stored.pop("seconds", 0.0)
    wanted = row_record(job, data, settings, n_boot, seed)
    if stored == wanted or _training_side(stored) != _training_side(wanted):
        return None
    started = time.monotonic()
    (out / ROW_RECORD).unlink()
    evaluation = evaluate(out, data=data, n_boot=n_boot, seed=seed)
    (out / "eval.json").write_text(json.dumps(evaluation))
    run["data"] = data.summary()
    (out / "run.json").write_text(json.dumps(run, indent=2))
    seconds = round(trained_s + time.monotonic() - started, 1)
    (out / ROW_RECORD).write_text(json.dumps({**wanted, "seconds": seconds}, indent=2))
    return JobResult(job.name, evaluation, seconds, rescored=True)


def _training_side(record: dict[str, Any]) -> dict[str, Any]:
    split = {k: v for k, v in record.get("split", {}).items() if k not in _TEST_SIDE_KEYS}
    return {**record, "split": split}


def reused_note(reused: list[str] | None, rescored: list[str] | None = None) -> str:
    """The sentence tail a report's table adds when --resume read rows back instead of training them."""
    parts = []
    if reused:
        parts.append(f"rows read back from an earlier run with the same inputs, --resume: {', '.join(reused)}")
    if rescored:
        parts.append(f"rows whose saved models, trained on this very training split, were scored on these test "
                     f"samples, --resume: {', '.join(rescored)}")
    return f" ({'; '.join(parts)})" if parts else ""


def _run_in_pool(jobs: list[Job], data: OfflineData, settings: TrainSettings, n_boot: int, seed: int, workers: int,
                 progress: bool, on_done: Callable[[JobResult], None] | None) -> dict[str, JobResult]:
    split_file = _split_handoff(Path(jobs[0].out_dir).parent, data)
    with open(split_file, "wb") as handle:
        pickle.dump(data, handle, protocol=pickle.HIGHEST_PROTOCOL)
    done: dict[str, JobResult] = {}
    bar = progress_bar(total=len(jobs), desc=f"training {len(jobs)} models, {workers} at a time", unit="model",
                       show=progress)
    try:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_load_split,
                                 initargs=(str(split_file),)) as pool:
            pending = {pool.submit(_run_in_worker, job, settings, n_boot, seed) for job in jobs}
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    result = future.result()  # a failed job fails the whole run, with its traceback
                    done[result.name] = result
                    bar.set_postfix_str(f"{result.name} {result.seconds:.0f} s", refresh=False)
                    bar.update()
                    if on_done:
                        on_done(result)
    finally:
        bar.close()
        split_file.unlink(missing_ok=True)
    return {job.name: done[job.name] for job in jobs}


def _split_handoff(folder: Path, data: OfflineData) -> Path:
    """The file that hands the split to the workers. It carries this process's id, so a later run can tell
    what a killed run left behind (its process is gone; its `finally` never ran) from a live run's file,
    and removes the leftovers: each is as large as the split."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in folder.glob(".split-*-*.pkl"):
        owner = path.name.split("-")[1]
        if owner.isdigit() and not _process_alive(int(owner)):
            log.warning("removing a split hand-off left by a run that is gone", extra={"file": str(path)})
            path.unlink(missing_ok=True)
    return folder / f".split-{os.getpid()}-{id(data):x}.pkl"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _load_split(path: str) -> None:
    global _worker_data
    with open(path, "rb") as handle:
        _worker_data = pickle.load(handle)


def _run_in_worker(job: Job, settings: TrainSettings, n_boot: int, seed: int) -> JobResult:
    assert _worker_data is not None, "the pool initializer loads the split"
    return _run(job, _worker_data, settings, n_boot, seed, progress=False)


def _run(job: Job, data: OfflineData, settings: TrainSettings, n_boot: int, seed: int, progress: bool) -> JobResult:
    started = time.monotonic()
    out = Path(job.out_dir)
    (out / ROW_RECORD).unlink(missing_ok=True)  # until this row finishes again, its folder is not a finished row
    if job.kind == PEER:
        from learner.peers import train_and_evaluate_peer

        evaluation = train_and_evaluate_peer(job.model, data, out, settings, n_boot, seed, progress)
    else:
        run = train_offline(data, job.model, out, settings, job.model_overrides, progress)
        evaluation = evaluate(run, data=data, n_boot=n_boot, seed=seed)
        (run / "eval.json").write_text(json.dumps(evaluation))
    seconds = round(time.monotonic() - started, 1)
    record = {**row_record(job, data, settings, n_boot, seed), "seconds": seconds}
    (out / ROW_RECORD).write_text(json.dumps(record, indent=2))
    return JobResult(job.name, evaluation, seconds)
