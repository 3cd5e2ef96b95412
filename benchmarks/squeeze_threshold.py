"""Squeeze-and-Threshold low-bit activation QAT on sklearn digits (the demo CNN).

    .venv/bin/python benchmarks/squeeze_threshold.py [--epochs 20] [--qat-epochs 10] [--seeds 0]
                                                     [--json benchmarks/results/squeeze_threshold.json]

Trains the float model, quantizes it to int8 (PTQ), then for 4, 3 and 2-bit activations converts
it to ST-QAT (a SqueezeThreshold after every ReLU), fine-tunes, freezes, deploys (int8 weights,
b-bit activations in int8 storage) and reports test accuracy of the integer reference, plus
whether host C equals the integer reference bit for bit on the whole test split.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from mcuforge import reference
from mcuforge.codegen.emit import write_library
from mcuforge.demo import digits_cnn, digits_split, train_classifier
from mcuforge.frontends import to_ir_layout
from mcuforge.frontends.torch import from_torch
from mcuforge.quant import squeeze_threshold as st
from mcuforge.quant.ptq import quantize
from mcuforge.targets.host import run_host
from mcuforge.zoo.trainer import predict

ROOT = Path(__file__).resolve().parent


def deploy(model, x_train, x_test, y_test, work: Path) -> dict:
    g = from_torch(model, torch.from_numpy(x_train[:1]))
    q = quantize(g, [to_ir_layout(g, g.inputs[0], x_train)])
    xq = q.tensors[q.inputs[0]].quant.quantize(to_ir_layout(q, q.inputs[0], x_test))
    y_ref = reference.run(q, [xq], mode="int")[0]
    work.mkdir(parents=True)
    report = write_library(q, work, prefix="m")
    y_c = run_host(work, [xq])[0]
    return {"accuracy": float(np.mean(np.argmax(y_ref, -1) == y_test)),
            "c_bit_exact": bool(np.array_equal(y_c, y_ref)),
            "arena_bytes": int(report["memory"]["arena_bytes"])}


def run(seed: int, epochs: int, qat_epochs: int, console: Console) -> dict:
    x_train, x_test, y_train, y_test = digits_split(seed)
    t0 = time.perf_counter()
    model = train_classifier(digits_cnn(), x_train, y_train, epochs, seed)
    res = {"seed": seed, "float": float(np.mean(np.argmax(predict(model, x_test), -1) == y_test))}
    with tempfile.TemporaryDirectory() as tmp:
        res["int8_ptq"] = deploy(model, x_train, x_test, y_test, Path(tmp) / "int8")
        for bits in (4, 3, 2):
            t1 = time.perf_counter()
            qat = st.qat_finetune(st.to_squeeze_threshold(model, bits, x_train[:256]), x_train, y_train,
                                  epochs=qat_epochs, seed=seed)
            frozen = st.freeze(qat)
            r = deploy(frozen, x_train, x_test, y_test, Path(tmp) / f"st{bits}")
            r["torch_frozen_accuracy"] = float(np.mean(np.argmax(predict(frozen, x_test), -1) == y_test))
            r["thresholds"] = st.thresholds(frozen)
            r["qat_s"] = time.perf_counter() - t1
            res[f"st_{bits}bit"] = r
            console.print(f"seed {seed}: {bits}-bit ST {r['accuracy']:.2%} (C bit-exact: {r['c_bit_exact']})")
    res["total_s"] = time.perf_counter() - t0
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--qat-epochs", type=int, default=10)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--json", type=Path, default=ROOT / "results" / "squeeze_threshold.json")
    args = ap.parse_args()
    console = Console()
    runs = [run(int(s), args.epochs, args.qat_epochs, console) for s in args.seeds.split(",")]
    rows = [("float (torch)", "float"), ("int8 PTQ", "int8_ptq"), ("ST 4-bit activations", "st_4bit"),
            ("ST 3-bit activations", "st_3bit"), ("ST 2-bit activations", "st_2bit")]
    table = Table(title=f"digits CNN, test accuracy (mean of {len(runs)} seed(s))", header_style="bold")
    for c in ("model", "accuracy", "vs int8", "C == integer reference"):
        table.add_column(c, justify="left" if c == "model" else "right")
    mean = lambda key: float(np.mean([r[key] if key == "float" else r[key]["accuracy"] for r in runs]))  # noqa: E731
    summary = {}
    for label, key in rows:
        a = mean(key)
        exact = None if key == "float" else all(r[key]["c_bit_exact"] for r in runs)
        summary[key] = {"accuracy": a, **({"c_bit_exact": exact} if exact is not None else {})}
        table.add_row(label, f"{a:.2%}", "" if key in ("float", "int8_ptq") else f"{(a - mean('int8_ptq')) * 100:+.2f} pt",
                      "" if exact is None else ("yes" if exact else "NO"))
    console.print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"data": "sklearn digits (70/30 split)", "model": "mcuforge.demo.digits_cnn",
                                     "epochs": args.epochs, "qat_epochs": args.qat_epochs,
                                     "activation_storage": "int8 (b-bit grid, zero point -128)",
                                     "summary": summary, "runs": runs, "python": platform.python_version(),
                                     "torch": torch.__version__}, indent=1))
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
