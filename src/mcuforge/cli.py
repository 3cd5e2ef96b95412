"""The `mcuforge` command."""

from __future__ import annotations

import sys
import traceback
from enum import Enum
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .errors import McuforgeError

app = typer.Typer(
    help="mcuforge: from a neural network to a bit-exact int8 C library for microcontrollers.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
)
# Piped output (CI logs, files) gets a width that keeps the layer table on one line per layer.
console = Console(width=None if Console().is_terminal else 130)
err_console = Console(stderr=True, width=None if Console(stderr=True).is_terminal else 130)
_state = {"debug": False}


class Method(str, Enum):
    minmax = "minmax"
    percentile = "percentile"
    mse = "mse"


def _version(value: bool) -> None:
    if value:
        console.print(f"mcuforge {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    _state["debug"] = debug


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err_console, transient=True)


def _load_npy(path: Path, what: str) -> np.ndarray:
    from .errors import InputError

    if not path.is_file():
        raise InputError(f"{what} file '{path}' does not exist")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises several types for bad files
        raise InputError(f"{what} file '{path}' is not a readable .npy array ({exc})") from None


def memory_table(report: dict) -> Table:
    t, m = report["totals"], report["memory"]
    table = Table(title="memory", show_header=True, header_style="bold")
    table.add_column("what")
    table.add_column("bytes", justify="right")
    table.add_row("activation arena (RAM, planned peak)", f"{m['arena_bytes']:,}")
    if m.get("scratch_bytes"):
        table.add_row("kernel scratch (RAM, im2col)", f"{m['scratch_bytes']:,}")
    table.add_row("activations without planning", f"{m['unplanned_bytes']:,}")
    table.add_row("weights + biases", f"{t['weight_bytes']:,}")
    table.add_row("all constants incl. layer parameters (flash)", f"{t['const_bytes']:,}")
    return table


def weight_storage_table(graph) -> Table:
    """Per conv/fc layer: storage format and the flash its weights take (portable kernels)."""
    from .compress.storage import storage_summary

    rows = storage_summary(graph)
    table = Table(title="weight storage (flash of the weights, portable kernels)")
    for col in ("layer", "storage", "weights", "distinct", "zeros", "flash B"):
        table.add_column(col, justify="right" if col not in ("layer", "storage") else "left")
    for r in rows:
        s = r["storage"]
        fmt = s["format"] + (f" {s['bits']}-bit" if "bits" in s else "") + (f" k={s['k']}" if "k" in s else "")
        table.add_row(r["name"], fmt, f"{r['weights']:,}", str(r["distinct"]), f"{r['zeros']:.0%}",
                      f"{r['flash_bytes']:,}")
    total, dense = sum(r["flash_bytes"] for r in rows), sum(r["weights"] for r in rows)
    table.add_row("total", "", f"{dense:,}", "", "", f"{total:,} ({dense / max(total, 1):.2f}x less than int8)")
    return table


def fit_summary(report: dict, target) -> str:
    """One line: the model's arena and constants against the target's RAM and flash (before linking)."""
    from .targets.table import format_size

    arena, consts = report["memory"]["arena_bytes"], report["totals"]["const_bytes"]
    scratch = report["memory"].get("scratch_bytes") or 0
    ok = arena + scratch <= target.ram and consts <= target.flash
    head = "[green]fits[/]" if ok else "[bold yellow]does not fit[/]"
    ram = f"arena {arena:,} B" + (f" + kernel scratch {scratch:,} B" if scratch else "")
    return (f"{head} {target.name} ({target.core.name}, {format_size(target.ram)} RAM, "
            f"{format_size(target.flash)} flash): {ram} = {(arena + scratch) / target.ram:.1%} of RAM, constants "
            f"{consts:,} B = {consts / target.flash:.1%} of flash, before code, stack and runtime "
            f"(`mcuforge bench` measures the linked firmware)")


def bench_tables(result: dict) -> list[Table]:
    """Per-layer instructions, then the totals, time estimate, flash and RAM of a bench result."""
    t, ins, est = result["target"], result["instructions"], result["estimate"]
    fmt = lambda v: f"{v:,.0f}" if isinstance(v, float) else f"{v:,}"  # noqa: E731
    layers = Table(title=f"{result['model']} on {t['name']} ({t['core']}, QEMU {t['qemu_machine']}): "
                   f"executed instructions per layer", header_style="bold")
    for col, just in (("#", "right"), ("layer", "left"), ("op", "left"), ("MACs", "right"),
                      ("instructions", "right"), ("per MAC", "right"), ("share", "right")):
        layers.add_column(col, justify=just)
    for r in result["layers"]:
        per_mac = f"{r['instructions_per_mac']:.2f}" if r["instructions_per_mac"] is not None else ""
        layers.add_row(str(r["index"]), r["name"], r["op"], f"{r['macs']:,}", fmt(r["instructions"]), per_mac,
                       f"{r['share']:.1%}")
    layers.add_row("", "call, return", "", "", fmt(ins["outside_layers"]), "", "")
    per_mac = f"{ins['per_mac']:.2f}" if ins["per_mac"] is not None else ""
    layers.add_row("", "[bold]per inference[/]", "", f"[bold]{result['macs']:,}[/]",
                   f"[bold]{fmt(ins['per_inference'])}[/]", f"[bold]{per_mac}[/]", "")
    summary = Table(title="speed and memory", header_style="bold")
    summary.add_column("what")
    summary.add_column("value", justify="right")
    spread = "" if ins["min"] == ins["max"] else f" (samples: {ins['min']:,} .. {ins['max']:,})"
    summary.add_row("instructions per inference (exact, QEMU)", fmt(ins["per_inference"]) + spread)
    summary.add_row("instructions per MAC", per_mac or "-")
    summary.add_row(f"estimated cycles (x CPI {est['cpi']})", f"{est['cycles']:,.0f}")
    summary.add_row(f"estimated time at {est['clock_hz'] / 1e6:g} MHz", f"{est['time_ms']:,.3f} ms")
    f, r, st = result["flash"], result["ram"], result["stack"]
    summary.add_row("flash: model code (.text)", f"{f['model_code']:,} B")
    summary.add_row("flash: weights and constants (.rodata)", f"{f['model_constants']:,} B")
    summary.add_row("flash: model .data initializers", f"{f['model_data_init']:,} B")
    summary.add_row("flash: runtime (start-up, runner, newlib)",
                    f"{f['runtime_code'] + f['runtime_constants'] + f['runtime_data_init']:,} B")
    summary.add_row("[bold]flash: total[/] / region", f"[bold]{f['total']:,} B[/] / {f['region']:,} B "
                    f"({f['total'] / f['region']:.1%})")
    summary.add_row("RAM: activation arena", f"{r['arena']:,} B")
    summary.add_row("RAM: other model .data/.bss", f"{r['model_other']:,} B")
    summary.add_row("RAM: stack used by one inference (measured)", f"{st['inference']:,} B")
    summary.add_row("RAM: runtime .data/.bss, heap, stack reserved",
                    f"{r['runtime_data_bss']:,} + {r['heap']:,} + {r['stack_reserved']:,} B")
    summary.add_row("[bold]RAM: total[/] / region", f"[bold]{r['total']:,} B[/] / {r['region']:,} B "
                    f"({r['total'] / r['region']:.1%})")
    return [layers, summary]


def layers_table(rows: list[dict], title: str) -> Table:
    table = Table(title=title, header_style="bold")
    for col, just in (("#", "right"), ("layer", "left"), ("op", "left"), ("input", "left"), ("output", "left"),
                      ("out scale, zp", "left"), ("MACs", "right"), ("params", "right")):
        table.add_column(col, justify=just)
    shape = lambda s: "x".join(map(str, s))  # noqa: E731
    for i, r in enumerate(rows):
        q = r.get("output_quant")
        qtxt = f"{q['scale']:.4g}, {q['zero_point']}" if q else "float"
        table.add_row(str(i), r["name"], r["op"], ", ".join(shape(s) for s in r["input_shapes"]),
                      shape(r["output_shape"]), qtxt, f"{r['macs']:,}", f"{r['params']:,}")
    table.add_row("", "[bold]total[/]", "", "", "", "", f"[bold]{sum(r['macs'] for r in rows):,}[/]",
                  f"[bold]{sum(r['params'] for r in rows):,}[/]")
    return table


def quantize_with_progress(graph, calib, method: str, percentile: float):
    from .quant.ptq import quantize

    with _progress() as progress:
        task = progress.add_task("calibrating", total=int(calib[0].shape[0]))
        return quantize(graph, calib, method=method, percentile=percentile,
                        progress=lambda done, total: progress.update(task, completed=done))


@app.command()
def deploy(
    model: Path = typer.Argument(..., help="Model file: .pt2 (torch.export), .onnx, .mcf (mcuforge graph)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output directory for the C library."),
    calib: Optional[Path] = typer.Option(None, "--calib", help="Calibration inputs for float models: .npy (N "
                                         "samples in the model's input layout), or .npz with one array per input "
                                         "(keyed by input name, or positional) for several inputs."),
    method: Method = typer.Option(Method.minmax, "--method", help="Calibration range: min/max, percentile, or "
                                  "the clipping with least quantization error (mse)."),
    percentile: float = typer.Option(99.99, "--percentile", help="Percentile for --method percentile."),
    name: str = typer.Option("model", "--name", help="C identifier prefix of the generated API."),
    target: Optional[str] = typer.Option(None, "--target", help="Cortex-M core or board the library is for "
                                         "(cortex-m4, nucleo-l4r5zi, ...; see README): recorded in report.json "
                                         "and used by run/bench. Default: portable C for any compiler."),
    ram: Optional[str] = typer.Option(None, "--ram", help="The target's RAM (e.g. 256K), instead of the table's."),
    flash: Optional[str] = typer.Option(None, "--flash", help="The target's flash (e.g. 1M), instead of the "
                                        "table's."),
    train: bool = typer.Option(False, "--train", help="Add on-device training: <name>_train_step(input, label) "
                               "(fully quantized SGD; docs/training.md)."),
    trainable: Optional[str] = typer.Option(None, "--trainable", help="--train: the conv/fc layers to train: "
                                            "all (default), last:K, or names/indices (comma list)."),
    budget: Optional[float] = typer.Option(None, "--budget", help="--train: dynamic partial updates, spending this "
                                           "fraction of a full update's backward MACs per step."),
    min_step_budget: float = typer.Option(0.3, "--min-step-budget", help="--train, dynamic: no step spends less "
                                          "than this fraction; a smaller --budget goes to the samples with the "
                                          "largest loss, the others skip the backward (0: never)."),
    train_policy: Optional[str] = typer.Option(None, "--train-policy", help="--train: full, bias (biases only) or "
                                               "dynamic (default: full, dynamic with --budget)."),
    lr: float = typer.Option(0.005, "--lr", help="--train: SGD step size (as float SGD, batch 1)."),
    momentum: float = typer.Option(0.0, "--momentum", help="--train: SGD momentum (0: none, no momentum buffers)."),
    rounding: str = typer.Option("stochastic", "--rounding", help="--train: weight update rounding, stochastic or "
                                 "nearest."),
    loss: Optional[str] = typer.Option(None, "--loss", help="--train: ce (softmax cross-entropy, default) or mse."),
    lr_halve_every: int = typer.Option(0, "--lr-halve-every", help="--train: halve the step size every N steps."),
    train_seed: int = typer.Option(0x5EED1234, "--train-seed", help="--train: seed of the stochastic rounding."),
    activation_bits: int = typer.Option(8, "--activation-bits", help="Activation storage bits: 8 only. Low-bit "
                                        "(Squeeze-and-Threshold) activations run in int8 storage on their 2^b-level "
                                        "grid; packed int4/int2 storage is not implemented."),
    weight_bits: Optional[str] = typer.Option(None, "--weight-bits", help="Weight bits of the conv/fc layers: 8, 4 "
                                              "or 2 for all, or per layer (conv1=4,fc=8); 4/2 bits are stored "
                                              "packed (README: Compressed weights)."),
    share_weights: Optional[str] = typer.Option(None, "--share-weights", help="Weight sharing: a codebook of K "
                                                "(2..16) int8 values per layer (k-means), for all or per layer "
                                                "(conv1=16,fc=4)."),
    sparse: Optional[str] = typer.Option(None, "--sparse", help="auto: store a layer's weights sparsely (zeros "
                                         "skipped) where that takes less flash; off (default)."),
) -> None:
    """Quantize a model and generate a self-contained C99 library."""
    from .codegen import generate
    from .errors import InputError, QuantizationError
    from .frontends import load_model, to_ir_layout
    from .targets.table import get_target

    if model.is_dir() and (model / "eenn.json").is_file():   # an early-exit network (mcuforge.eenn)
        from .eenn.deploy_cli import deploy_eenn

        if train or calib is not None or activation_bits != 8:
            raise InputError("an early-exit network is already int8: --calib, --train and --activation-bits do not "
                             "apply to it")
        deploy_eenn(model, out, name, target, ram, flash, console)
        return

    if activation_bits != 8:
        from .quant.squeeze_threshold import check_activation_bits

        check_activation_bits(activation_bits)
    if target is None and (ram or flash):
        raise InputError("--ram and --flash describe a target: name it with --target (e.g. --target cortex-m4)")
    tgt = get_target(target, ram, flash) if target else None
    graph = load_model(model)
    float_graph = graph
    if not graph.is_quantized:
        if calib is None:
            raise QuantizationError(f"'{model}' is a float model: give calibration data with --calib X.npy "
                                    f"(a few hundred representative inputs, shape (N, ...) as the model takes them)")
        from .runner import read_arrays

        xs = read_arrays(calib, list(graph.inputs), "calibration")
        for x in xs:
            if x.dtype.kind not in "fiu":
                raise QuantizationError(f"calibration data must be numeric, got dtype {x.dtype}")
        graph = quantize_with_progress(graph, [to_ir_layout(graph, name, x.astype(np.float32))
                                               for name, x in zip(graph.inputs, xs)], method.value, percentile)
    if weight_bits or share_weights or sparse:
        from .compress.storage import apply_storage_options, float_weights_of

        if train:
            raise InputError("--weight-bits, --share-weights and --sparse cannot be combined with --train "
                             "(training updates int8 weights in RAM)")
        graph = apply_storage_options(graph, weight_bits, share_weights, sparse, float_weights_of(float_graph))
    extension = None
    if train:
        from .train.cli import training_config
        from .train.codegen import TrainExtension

        extension = TrainExtension(graph, training_config(graph, trainable, budget, train_policy, lr, momentum,
                                                          rounding, loss, lr_halve_every, train_seed,
                                                          min_step_budget), tgt)
    elif trainable or budget is not None or train_policy:
        raise InputError("--trainable, --budget and --train-policy need --train")
    report = generate(graph, out, prefix=name, target=tgt, extension=extension)
    console.print(layers_table(report["layers"], f"{graph.name}: {len(report['layers'])} layers"))
    console.print(memory_table(report))
    if train:
        from .train.cli import training_memory_table

        console.print(training_memory_table(report))
    if weight_bits or share_weights or sparse:
        console.print(weight_storage_table(graph))
    if tgt is not None:
        console.print(fit_summary(report, tgt))
    console.print(f"[green]wrote[/] {out}/ ({name}.h, {name}.c, kernels, Makefile, CMakeLists.txt, report.md)")


@app.command()
def run(
    lib: Path = typer.Argument(..., help="Directory written by `mcuforge deploy`."),
    input: Path = typer.Option(..., "--input", help="Inputs .npy: float32 (quantized with the model's input "
                               "parameters) or int8 (taken as is), shape (N, ...); several inputs: .npz, one "
                               "array per input (by name, or positional)."),
    output: Path = typer.Option(..., "--output", help="Where to write the outputs: .npy, or .npz (one array "
                                "per output name; needed for several outputs)."),
    target: str = typer.Option("reference", "--target", help="reference: numpy integer reference; host: the "
                               "generated C compiled with the system compiler; a Cortex-M core or board "
                               "(cortex-m4, nucleo-l4r5zi, ...): firmware run on QEMU."),
    dequantize: bool = typer.Option(False, "--dequantize", help="Write float32 outputs instead of int8."),
    ram: Optional[str] = typer.Option(None, "--ram", help="Cortex-M targets: RAM size (e.g. 256K)."),
    flash: Optional[str] = typer.Option(None, "--flash", help="Cortex-M targets: flash size (e.g. 1M)."),
) -> None:
    """Run a deployed library on a batch of inputs."""
    from .errors import InputError
    from .runner import load_library, read_arrays, run_library, write_arrays
    from .eenn.runner import is_eenn_library

    if is_eenn_library(lib):   # one stream through the early-exit runtime: class and exit taken per sample
        from .eenn.deploy_cli import run_eenn

        y = run_eenn(lib, _load_npy(input, "input"), target, console)
        try:
            np.save(output, y)
        except OSError as exc:
            raise InputError(f"cannot write '{output}': {exc.strerror or exc}") from None
        console.print(f"[green]wrote[/] {output}: int32 {tuple(y.shape)}, class and exit taken per sample ({target})")
        return

    graph = load_library(lib)
    if len(graph.outputs) > 1 and output.suffix != ".npz":   # before the run: nothing is lost
        raise InputError(f"the model has {len(graph.outputs)} outputs ({', '.join(graph.outputs)}): "
                         f"give --output a .npz path")
    xs = read_arrays(input, list(graph.inputs), "input")
    ys = run_library(lib, graph, xs, target, dequantize, ram=ram, flash=flash)
    write_arrays(output, list(graph.outputs), ys)
    what = ", ".join(f"{n}: {y.dtype} {tuple(y.shape)}" for n, y in zip(graph.outputs, ys))
    console.print(f"[green]wrote[/] {output}: {what} ({target})")


@app.command()
def bench(
    lib: Path = typer.Argument(..., help="Directory written by `mcuforge deploy`."),
    target: Optional[str] = typer.Option(None, "--target", help="Cortex-M core or board (default: the one the "
                                         "library was deployed for, else cortex-m4)."),
    ram: Optional[str] = typer.Option(None, "--ram", help="RAM size (e.g. 256K), instead of the target's."),
    flash: Optional[str] = typer.Option(None, "--flash", help="Flash size (e.g. 1M), instead of the target's."),
    input: Optional[Path] = typer.Option(None, "--input", help="Inputs .npy/.npz to measure with (float32 or "
                                         "int8, shape (N, ...), as for run); default: random int8 samples."),
    samples: int = typer.Option(3, "--samples", min=1, help="Number of random samples without --input."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results to this JSON file."),
) -> None:
    """Measure a deployed library on an emulated Cortex-M: instructions, estimated time, flash, RAM."""
    import json

    from .errors import InputError
    from .runner import load_library, prepare_input, read_arrays
    from .targets.bench import CYCLE_NOTE, bench as run_bench
    from .targets.cortex_m import resolve_target
    from .eenn.runner import is_eenn_library

    if is_eenn_library(lib):   # instructions per part and per exit of an early-exit library
        from .eenn.deploy_cli import bench_eenn

        bench_eenn(lib, target, ram, flash, _load_npy(input, "input") if input is not None else None, samples,
                   json_out, console)
        return

    graph = load_library(lib)
    report = json.loads((lib / "report.json").read_text())
    tgt = resolve_target(report, target, ram, flash)
    xs = None
    if input is not None:
        xs = [prepare_input(graph, name, x) for name, x in
              zip(graph.inputs, read_arrays(input, list(graph.inputs), "input"))]
    with err_console.status(f"building and running on QEMU {tgt.machine.name if tgt.machine else ''} ..."):
        result = run_bench(lib, tgt, xs, samples=samples)
    for table in bench_tables(result):
        console.print(table)
    console.print(f"[dim]{CYCLE_NOTE}.[/]")
    if json_out is not None:
        from .outdir import write_json_file

        write_json_file(json_out, result)
        console.print(f"[green]wrote[/] {json_out}")


@app.command("train-on-device")
def train_on_device(
    lib: Path = typer.Argument(..., help="Directory written by `mcuforge deploy --train`."),
    data: Path = typer.Option(..., "--data", help="Training samples: .npz with arrays x (inputs in the model's "
                              "layout, float32 or int8) and y (class indices, or targets for MSE), or an .npy of "
                              "inputs with --labels."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Labels .npy (with an .npy --data)."),
    target: str = typer.Option("reference", "--target", help="reference (the numpy twin), host (the generated C, "
                               "system compiler) or a Cortex-M core/board (firmware on QEMU, exact instruction "
                               "counts)."),
    epochs: int = typer.Option(1, "--epochs", min=1, help="Passes over the samples (in order)."),
    every: Optional[int] = typer.Option(None, "--every", min=1, help="Steps between checkpoints (default: N/10)."),
    eval_data: Optional[Path] = typer.Option(None, "--eval", help="Held-out .npz (x, y): accuracy at every "
                                             "checkpoint."),
    save_lib: Optional[Path] = typer.Option(None, "--save-lib", help="Write the library with the adapted weights "
                                            "here."),
    save_ir: Optional[Path] = typer.Option(None, "--save-ir", help="Write the adapted int8 graph (.mcf) here."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results to this JSON file."),
    ram: Optional[str] = typer.Option(None, "--ram", help="Cortex-M targets: RAM size (e.g. 256K)."),
    flash: Optional[str] = typer.Option(None, "--flash", help="Cortex-M targets: flash size (e.g. 1M)."),
) -> None:
    """Stream samples through a library's training step: accuracy over time, instructions per sample, RAM."""
    from .train.cli import run_train_on_device

    run_train_on_device(lib, data, labels, target, epochs, every, eval_data, save_lib, save_ir, json_out, ram, flash,
                        console)


@app.command()
def inspect(model: Path = typer.Argument(..., help="A .pt2, .onnx, .tflite or .mcf model, or a deployed "
                                          "directory.")) -> None:
    """Show a model's layers: ops, shapes, quantization, MACs and parameters."""
    from .codegen.report import layer_rows
    from .frontends import load_model
    from .runner import load_library

    graph = load_library(model) if model.is_dir() else load_model(model)
    rows = layer_rows(graph)
    kind = "int8" if graph.is_quantized else "float"
    console.print(layers_table(rows, f"{graph.name} ({kind}): {len(rows)} layers"))
    for name in graph.inputs:
        t = graph.tensors[name]
        console.print(f"input  {name}: {t.dtype} {t.shape}" + (f" scale {t.quant.s:.6g} zp {t.quant.zp}" if t.quant else ""))
    for name in graph.outputs:
        t = graph.tensors[name]
        console.print(f"output {name}: {t.dtype} {t.shape}" + (f" scale {t.quant.s:.6g} zp {t.quant.zp}" if t.quant else ""))


class ExportFormat(str, Enum):
    tflite = "tflite"


@app.command()
def export(
    model: Path = typer.Argument(..., help="A deployed directory, or a quantized model (.mcf, .tflite, "
                                 "quantized .onnx)."),
    format: ExportFormat = typer.Option(ExportFormat.tflite, "--format", help="Output format."),
    out: Path = typer.Option(..., "-o", "--out", help="Output file (.tflite)."),
) -> None:
    """Write a quantized mcuforge graph as an int8 .tflite file that TFLite Micro runs."""
    from .errors import InputError
    from .export import to_tflite_bytes
    from .frontends import load_model
    from .runner import load_library

    graph = load_library(model) if model.is_dir() else load_model(model)
    if not graph.is_quantized:
        from .errors import QuantizationError

        raise QuantizationError(f"'{model}' is a float model: deploy it first (mcuforge deploy MODEL --calib X.npy "
                                "-o DIR) and export the deployed directory")
    data = to_tflite_bytes(graph)
    try:
        out.write_bytes(data)
    except OSError as exc:
        raise InputError(f"cannot write '{out}': {exc.strerror or exc}") from None
    console.print(f"[green]wrote[/] {out}: {len(data):,} bytes, {len(graph.nodes)} layers ({format.value})")


@app.command()
def demo(
    out: Path = typer.Option(Path("out/demo"), "-o", "--out", help="Output directory."),
    epochs: int = typer.Option(20, "--epochs", min=1, help="Training epochs."),
    seed: int = typer.Option(0, "--seed", help="Random seed (data split, initialisation)."),
) -> None:
    """Train a small CNN on sklearn's digits, deploy it as C, and check C against the reference."""
    from .demo import run_demo

    run_demo(out, epochs=epochs, seed=seed, console=console)


class Preset(str, Enum):
    tiny = "tiny"
    small = "small"
    full = "full"


@app.command()
def train(
    model: str = typer.Argument(..., help="Zoo model (`mcuforge zoo` lists them)."),
    data: Optional[str] = typer.Option(None, "--data", help="Data set (default: the model's)."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Output directory (default out/MODEL)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Training epochs (default: per preset)."),
    preset: Preset = typer.Option(Preset.small, "--preset", help="Data set size and default epochs."),
    root: Optional[Path] = typer.Option(None, "--root", help="Local folder of a real data set "
                                        "(speech_commands, mitbih, motor_csv, mnist, cifar10)."),
    seed: int = typer.Option(0, "--seed", help="Random seed (data, initialisation, shuffling)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1, help="Stop after this many steps."),
    deploy_too: bool = typer.Option(False, "--deploy", help="Also quantize, generate OUT/lib and report int8 "
                                    "metrics (C checked against the reference)."),
) -> None:
    """Train a zoo model; writes model.pt, model.pt2 (for `mcuforge deploy`), calib.npy, metrics.json."""
    from .zoo.cli import run_train

    run_train(model, data, out, epochs, preset.value, root, seed, max_steps, deploy_too, console, err_console)


@app.command()
def compress(
    model: str = typer.Argument(..., help="A directory written by `mcuforge train` (or a zoo name trained into "
                                "out/NAME)."),
    data: Optional[str] = typer.Option(None, "--data", help="Data set (default: the one it was trained on)."),
    target: str = typer.Option("cortex-m4", "--target", help="Cortex-M core or board the budget is for."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Output directory (not needed with --worker)."),
    max_instructions: Optional[int] = typer.Option(None, "--max-instructions", min=1, help="Budget: instructions "
                                                   "per inference on the target."),
    flash: Optional[str] = typer.Option(None, "--flash", help="Budget: firmware flash (bytes, K or M)."),
    ram: Optional[str] = typer.Option(None, "--ram", help="Budget: firmware RAM (bytes, K or M)."),
    min_accuracy: Optional[float] = typer.Option(None, "--min-accuracy", help="Least task metric on the validation "
                                                 "split (accuracy or AUC as a fraction; MAE: the most)."),
    trials: int = typer.Option(24, "--trials", min=0, help="Finished trials the study should hold."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Study storage URL (postgresql://... for many "
                                          "workers); default: SQLite file OUT.study.db."),
    study: Optional[str] = typer.Option(None, "--study", help="Study name (default compress-MODEL-TARGET)."),
    worker: bool = typer.Option(False, "--worker", help="Only run trials of an existing study."),
    criterion: Optional[str] = typer.Option(None, "--criterion", help="Channel importance: l1, taylor or deeplift "
                                            "(default: searched over all three)."),
    finetune_epochs: int = typer.Option(2, "--finetune-epochs", min=0, help="Fine-tuning epochs per trial."),
    final_epochs: int = typer.Option(10, "--final-epochs", min=0, help="Fine-tuning epochs of the chosen model."),
    tolerance: float = typer.Option(0.05, "--tolerance", help="Sensitivity threshold: relative metric loss "
                                    "allowed when one layer is pruned alone."),
    weight_formats: str = typer.Option("int8", "--weight-formats", help="Weight formats the search may give all "
                                       "prunable layers but the most sensitive: comma list of int8, int4, int2, "
                                       "codebook16, codebook4."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
) -> None:
    """Prune a trained model until it meets a budget on a target (sensitivity analysis, Optuna search)."""
    from .compress.cli import run as run_compress
    from .compress.search import Budget
    from .targets.table import parse_size

    budget = Budget(max_instructions, parse_size(flash, "--flash"), parse_size(ram, "--ram"), min_accuracy)
    run_compress(model, data, target, out, budget, trials, storage, study, worker, criterion, finetune_epochs,
                 final_epochs, tolerance, seed, console, err_console,
                 tuple(f.strip() for f in weight_formats.split(",") if f.strip()))


@app.command()
def eenn(
    model: str = typer.Argument(..., help="A zoo classifier (trained into out/NAME if needed) or a directory "
                                "written by `mcuforge train`."),
    data: Optional[str] = typer.Option(None, "--data", help="Data set (default: the one it was trained on); "
                                       "its correlated stream (ecg, keywords, digits) is the evaluation."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Output directory: the early-exit network "
                                       "(eenn.json, segment*.mcf, head*.mcf), Pareto table/plot, summary."),
    trials: int = typer.Option(200, "--trials", min=1, help="Finished trials the study should hold."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Study storage URL (postgresql://... for many "
                                          "workers); default: SQLite file OUT.study.db."),
    study: Optional[str] = typer.Option(None, "--study", help="Study name (default eenn-MODEL-TARGETS-KINDS)."),
    worker: bool = typer.Option(False, "--worker", help="Only run trials of an existing study."),
    targets: str = typer.Option("cortex-m4", "--targets", help="1-3 devices the segments map onto, in link "
                                "order: cortex-m4, cortex-m7, edge-cpu."),
    kinds: Optional[str] = typer.Option(None, "--kinds", help="Decision mechanisms to search (default all): "
                                        "confidence,margin,entropy,difference,patience."),
    max_loss: float = typer.Option(2.0, "--max-loss", min=0.0, help="Accuracy points the chosen network may lose "
                                   "against the single exit on the validation stream."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the search."),
) -> None:
    """Early exits: augment a trained classifier, search exits/decision/mapping on a correlated stream."""
    from .eenn.cli import run as run_eenn_search

    run_eenn_search(model, data, out, trials, storage, study, worker, targets, max_loss, kinds, seed, console,
                    err_console)


@app.command()
def zoo() -> None:
    """List the zoo's models and the data sets."""
    from .zoo.cli import print_zoo

    print_zoo(console)


def main() -> None:
    """Entry point: usage errors are typer's (exit 2); our errors print one line (exit 1)."""
    try:
        app()
    except McuforgeError as exc:
        if _state["debug"]:
            traceback.print_exc()
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("[red]interrupted[/]")
        sys.exit(130)
    except Exception as exc:  # a bug in mcuforge: say so, briefly
        if _state["debug"]:
            traceback.print_exc()
        err_console.print(f"[bold red]internal error:[/] {type(exc).__name__}: {exc} "
                          "(run with --debug for the traceback)", highlight=False, soft_wrap=True)
        sys.exit(3)


if __name__ == "__main__":
    main()
