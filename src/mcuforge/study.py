"""Multi-objective design-space studies shared by `mcuforge compress` and `mcuforge eenn`.

One place decides where a study lives and how trials run, so every search has the same options:

* storage: a local SQLite file by default (``<out>/study.db``), or any URL Optuna's RDB storage
  accepts, ``postgresql://user@host/db`` in particular, so that many workers on many machines share
  one study (each runs ``... --worker`` against the same URL and study name);
* resumable: opening an existing study continues it; finished trials are never re-run;
* progress: a rich progress bar over the trials this process runs;
* results: the Pareto front as rows (for a table and JSON) and as a scatter plot.
"""
from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .errors import McuforgeError


class StudyError(McuforgeError):
    """A study cannot be opened or run (bad storage URL, unreachable database, wrong objectives)."""


@dataclass(frozen=True)
class Objective:
    """One axis of the search: a name shown to the user and whether smaller is better."""

    name: str
    minimize: bool

    @property
    def direction(self) -> str:
        return "minimize" if self.minimize else "maximize"


def storage_url(storage: str | None, default_file: Path) -> str:
    """The storage URL: ``storage`` if given (sqlite:// or postgresql://), else a SQLite file."""
    if not storage:
        default_file = Path(default_file)
        default_file.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{default_file.resolve()}"
    scheme = storage.split("://", 1)[0] if "://" in storage else ""
    if scheme.split("+", 1)[0] not in ("sqlite", "postgresql", "mysql"):
        raise StudyError(f"--storage {storage!r}: expected sqlite:///PATH or postgresql://USER@HOST/DB")
    if scheme == "postgresql":  # SQLAlchemy's default driver is psycopg2; the installed one is psycopg 3
        return "postgresql+psycopg://" + storage.split("://", 1)[1]
    return storage


def open_study(name: str, objectives: Sequence[Objective], storage: str | None, default_file: Path,
               seed: int = 0, create: bool = True):
    """Open (or create) study ``name``; its objectives must match those it was created with."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    url = storage_url(storage, default_file)
    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True) if len(objectives) == 1 else \
        optuna.samplers.NSGAIISampler(seed=seed, population_size=16)
    try:
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        rdb = optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180,
                                         engine_kwargs={"pool_pre_ping": True})
        if create:
            study = optuna.create_study(study_name=name, storage=rdb, sampler=sampler, load_if_exists=True,
                                        directions=[o.direction for o in objectives])
        else:
            study = optuna.load_study(study_name=name, storage=rdb, sampler=sampler)
    except KeyError as e:  # load_study on a name that does not exist
        raise StudyError(f"no study {name!r} in {url} (start it without --worker first)") from e
    except Exception as e:  # sqlalchemy / driver errors: unreachable server, bad credentials, ...
        if isinstance(e, McuforgeError):
            raise
        raise StudyError(f"cannot open study {name!r} at {url}: {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}") from e
    want = [o.direction for o in objectives]
    have = [d.name.lower() for d in study.directions]
    if have != want:
        raise StudyError(f"study {name!r} at {url} has objectives {have}, this search needs {want}; "
                         f"use another --study name")
    names = study.user_attrs.get("objectives")
    if names is None:
        study.set_user_attr("objectives", [o.name for o in objectives])
    elif names != [o.name for o in objectives]:
        raise StudyError(f"study {name!r} at {url} optimizes {names}, not {[o.name for o in objectives]}")
    return study


def finished_trials(study) -> list:
    import optuna

    return [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]


def run_trials(study, objective: Callable, n_trials: int, label: str = "trials", show: bool = True) -> int:
    """Run until the study holds ``n_trials`` finished trials (counting other workers'); returns how
    many this process ran. Resuming a finished study runs nothing."""
    import optuna
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    todo = max(0, n_trials - len(finished_trials(study)))
    if todo == 0:
        return 0
    ran = 0
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  disable=not show or bool(os.environ.get("MCUFORGE_NO_PROGRESS"))) as bar:
        task = bar.add_task(label, total=n_trials, completed=n_trials - todo)
        # MaxTrialsCallback stops every worker once the shared study reaches n_trials.
        stop = optuna.study.MaxTrialsCallback(n_trials, states=(optuna.trial.TrialState.COMPLETE,))

        def advance(st, tr):
            nonlocal ran
            ran += 1
            bar.update(task, completed=min(n_trials, len(finished_trials(st))))

        study.optimize(objective, n_trials=todo, callbacks=[stop, advance], catch=(ArithmeticError,))
    return ran


def pareto_rows(study, objectives: Sequence[Objective]) -> list[dict]:
    """The Pareto-optimal trials as dicts: number, each objective by name, params and user attrs,
    sorted by the first objective."""
    rows = []
    for t in study.best_trials:
        row = {"trial": t.number}
        row.update({o.name: v for o, v in zip(objectives, t.values)})
        row["params"] = dict(t.params)
        row.update({k: v for k, v in t.user_attrs.items() if k not in row})
        rows.append(row)
    first = objectives[0]
    rows.sort(key=lambda r: r[first.name], reverse=not first.minimize)
    return rows


def pareto_plot(study, objectives: Sequence[Objective], path: Path, x: str, y: str, title: str = "") -> Path:
    """Scatter all finished trials on two objectives with the Pareto front highlighted (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = {o.name: i for i, o in enumerate(objectives)}
    if x not in idx or y not in idx:
        raise StudyError(f"pareto_plot: unknown objective {x!r} or {y!r}")
    done = finished_trials(study)
    front = {t.number for t in study.best_trials}
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    others = [t for t in done if t.number not in front]
    best = sorted((t for t in done if t.number in front), key=lambda t: t.values[idx[x]])
    ax.scatter([t.values[idx[x]] for t in others], [t.values[idx[y]] for t in others], s=12, c="0.7",
               label="trials")
    ax.plot([t.values[idx[x]] for t in best], [t.values[idx[y]] for t in best], "o-", c="C3", ms=5,
            label="Pareto front")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title or study.study_name)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def save_figure(fig, path: str | Path) -> Path:
    """Lay out, write (making the folder) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
