"""`mcuforge demo`: the whole flow on built-in data, in seconds.

Trains a small CNN on sklearn's 8x8 digits, exports it with torch.export,
imports it, quantizes it to int8 on the training split, generates the C
library, compiles it with the host compiler, runs it over the whole test split
and compares float, int8 reference and C results.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table


def digits_split(seed: int = 0, test_fraction: float = 0.3):
    """sklearn digits as float32 N,1,8,8 in [0, 1], stratified train/test split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None, :, :]
    return train_test_split(x, d.target.astype(np.int64), test_size=test_fraction, random_state=seed,
                            stratify=d.target)


def digits_cnn():
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1), nn.Linear(32, 10),
    )


def train_classifier(model, x: np.ndarray, y: np.ndarray, epochs: int, seed: int, progress=None,
                     lr: float = 3e-3, batch: int = 64):
    """Cross-entropy training with the zoo's loop (mcuforge.zoo.trainer.fit)."""
    from .zoo.trainer import fit

    return fit(model, x, y, "ce", epochs, seed, lr=lr, batch=batch, progress=progress)


def run_demo(out: Path, epochs: int = 20, seed: int = 0, console: Console | None = None) -> dict:
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from . import reference
    from .cli import layers_table, memory_table
    from .codegen.emit import write_library
    from .frontends import from_ir_layout, to_ir_layout
    from .frontends.torch import from_exported
    from .outdir import staged_output_dir
    from .quant.ptq import quantize
    from .targets.host import run_host

    console = console or Console()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    x_train, x_test, y_train, y_test = digits_split(seed)
    console.print(f"[bold]digits[/]: {len(x_train)} training and {len(x_test)} test images, 8x8, 10 classes")

    with staged_output_dir(out) as stage:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TextColumn("{task.fields[info]}"), console=console, transient=True) as progress:
            task = progress.add_task("training", total=epochs, info="")
            model = train_classifier(digits_cnn(), x_train, y_train, epochs, seed,
                                     lambda e, loss: progress.update(task, completed=e, info=f"loss {loss:.3f}"))
        timings["train_s"] = time.perf_counter() - t0

        with torch.no_grad():
            logits_torch = model(torch.from_numpy(x_test)).numpy()
        ep = torch.export.export(model, (torch.from_numpy(x_train[:1]),))
        torch.export.save(ep, stage / "model.pt2")
        graph = from_exported(ep, name="digits_cnn")
        name = graph.inputs[0]

        # The IR's float semantics must reproduce torch before quantization means anything.
        logits_ir = from_ir_layout(graph, graph.outputs[0],
                                   reference.run(graph, [to_ir_layout(graph, name, x_test)], mode="float")[0])
        float_gap = float(np.abs(logits_ir - logits_torch).max())

        t1 = time.perf_counter()
        qgraph = quantize(graph, [to_ir_layout(graph, name, x_train)])
        lib = stage / "lib"
        lib.mkdir()
        report = write_library(qgraph, lib, prefix="digits")
        timings["quantize_and_generate_s"] = time.perf_counter() - t1

        xq = qgraph.tensors[name].quant.quantize(to_ir_layout(qgraph, name, x_test))
        y_ref = reference.run(qgraph, [xq], mode="int")[0]
        t2 = time.perf_counter()
        y_c = run_host(lib, [xq])[0]
        timings["host_build_and_run_s"] = time.perf_counter() - t2
        mismatches = int(np.count_nonzero(y_ref != y_c))

        acc = lambda logits: float(np.mean(np.argmax(logits, axis=-1) == y_test))  # noqa: E731
        summary = {
            "data": {"train": len(x_train), "test": len(x_test)},
            "float_accuracy": acc(logits_torch),
            "int8_reference_accuracy": acc(y_ref),
            "c_accuracy": acc(y_c),
            "c_vs_reference_mismatches": mismatches,
            "outputs_compared": int(y_ref.size),
            "torch_vs_ir_float_max_abs_diff": float_gap,
            "macs": report["totals"]["macs"],
            "params": report["totals"]["params"],
            "weight_bytes": report["totals"]["weight_bytes"],
            "const_bytes": report["totals"]["const_bytes"],
            "arena_bytes": report["memory"]["arena_bytes"],
            "timings": timings,
        }
        np.save(stage / "test_inputs.npy", x_test)
        np.save(stage / "test_labels.npy", y_test)
        (stage / "summary.json").write_text(json.dumps(summary, indent=1))

    console.print(layers_table(report["layers"], "digits_cnn (int8)"))
    results = Table(title="results on the test split", header_style="bold")
    results.add_column("what")
    results.add_column("value", justify="right")
    results.add_row("float accuracy (torch)", f"{summary['float_accuracy']:.2%}")
    results.add_row("int8 reference accuracy (numpy)", f"{summary['int8_reference_accuracy']:.2%}")
    results.add_row("C accuracy (host gcc)", f"{summary['c_accuracy']:.2%}")
    results.add_row("C vs reference: differing outputs",
                    f"[{'green' if mismatches == 0 else 'red'}]{mismatches}[/] of {y_ref.size:,}")
    results.add_row("torch vs IR float: max |diff|", f"{float_gap:.2e}")
    console.print(results)
    console.print(memory_table(report))
    console.print(f"[green]wrote[/] {out}/: model.pt2, lib/ (C library digits.h/.c, report.md), summary.json")
    if mismatches:
        from .errors import McuforgeError

        raise McuforgeError(f"C and the integer reference differ in {mismatches} outputs")
    return summary
