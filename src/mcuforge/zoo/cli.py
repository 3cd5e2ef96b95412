"""`mcuforge train` and `mcuforge zoo`: rich output around zoo.train / zoo.deploy_and_evaluate."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table


def _fmt_metrics(m: dict) -> str:
    parts = []
    for k, v in m.items():
        if isinstance(v, float):
            parts.append(f"{k} {v:.2%}" if k in ("accuracy", "auc") else f"{k} {v:.3g}")
    return ", ".join(parts)


def run_train(model: str, data: str | None, out: Path | None, epochs: int | None, preset: str, root: Path | None,
              seed: int, max_steps: int | None, deploy: bool, console: Console, err_console: Console) -> dict:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from . import deploy_and_evaluate, get
    from . import train as train_model

    spec = get(model)
    out = out or Path("out") / model
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[info]}"), console=err_console, transient=True) as progress:
        task = progress.add_task("preparing", total=None, info="")

        def on_phase(text: str) -> None:
            progress.update(task, description=text, total=None, completed=0, info="")

        def on_step(step: int, total: int, loss: float) -> None:
            progress.update(task, total=total, completed=step, info=f"loss {loss:.4f}")

        metrics = train_model(model, data=data, preset=preset, out=out, epochs=epochs, seed=seed, root=root,
                              max_steps=max_steps, on_step=on_step, on_phase=on_phase)
        if deploy:
            on_phase("quantizing, generating C, evaluating int8")
            metrics = deploy_and_evaluate(out)
    table = Table(title=f"{model} ({spec.task}) on {metrics['data']} ({preset})", header_style="bold")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("parameters", f"{metrics['params']:,}")
    table.add_row("samples train / test", f"{metrics['samples']['train']:,} / {metrics['samples']['test']:,}")
    table.add_row("epochs, training time", f"{metrics['epochs']}, {metrics['timings']['train_s']:.1f} s")
    for split, m in metrics["float"].items():
        table.add_row(f"float {split}", _fmt_metrics(m))
    if "int8" in metrics:
        table.add_row("int8 test (reference)", _fmt_metrics(metrics["int8"]["test"]))
        mm = metrics["int8"]["c_vs_reference_mismatches"]
        table.add_row("C vs reference: differing outputs",
                      f"[{'green' if mm == 0 else 'red'}]{mm}[/] of {metrics['int8']['c_outputs_compared']:,}")
        d = metrics["deployed"]
        table.add_row("MACs", f"{d['macs']:,}")
        table.add_row("flash (constants) / arena", f"{d['const_bytes']:,} B / {d['arena_bytes']:,} B")
    console.print(table)
    console.print(f"[green]wrote[/] {out}/: model.pt, model.pt2, calib.npy, metrics.json"
                  + (", lib/" if deploy else "")
                  + f"\nnext: mcuforge deploy {out}/model.pt2 --calib {out}/calib.npy -o {out}/lib")
    if deploy and metrics["int8"]["c_vs_reference_mismatches"]:
        from ..errors import McuforgeError

        raise McuforgeError("C and the integer reference differ")
    return metrics


def print_zoo(console: Console) -> None:
    from .. import data as datasets
    from . import MODELS

    t = Table(title="models (mcuforge train MODEL [--data NAME])", header_style="bold")
    for c in ("model", "task", "default data", "also", "input", "description"):
        t.add_column(c)
    for s in MODELS.values():
        t.add_row(s.name, s.task, s.data, ", ".join(d for d in s.data_kinds if d != s.data),
                  "x".join(map(str, s.input_shape)), s.description)
    console.print(t)
    d = Table(title="data sets (mcuforge.data.load)", header_style="bold")
    for c in ("name", "kind", "splits", "description"):
        d.add_column(c)
    for name, e in datasets.describe().items():
        d.add_row(name, "synthetic" if e["synthetic"] else "local (--root)", ", ".join(e["splits"]), e["description"])
    console.print(d)
