"""Compressed weight storage on a zoo model: weight flash, accuracy and Cortex-M4 instructions.

    .venv/bin/python benchmarks/weight_storage.py [--model ds_cnn] [--dir out/ws_ds_cnn]
        [--qat-epochs 3] [--json benchmarks/results/weight_storage.json]

Trains the model with `mcuforge train MODEL --preset small` into --dir unless it is there,
quantizes it (PTQ, min/max) and compares, on the whole test split: int8; int4 (packed, per-channel
scales re-derived from the float weights); 4-bit weight sharing (16-entry codebook per layer,
k-means of the int8 weights); 2-bit (packed, from the float weights); and, when --qat-epochs > 0,
int4 and 2-bit after quantization-aware fine-tuning (compress.finetune.finetune_low_bit).
Per variant: flash of the conv/fc weights (portable kernels, compress.storage.weight_flash_bytes),
accuracy of the numpy integer reference and of host C (with the number of outputs where they differ),
the reference's accuracy on the model's other held-out splits (val, and new_speakers for keywords),
and exact instructions per inference on QEMU Cortex-M4 (DSP kernels, `mcuforge bench`), with the
firmware's model constants (.rodata) and the kernel scratch (RAM) that the DSP decode uses.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from mcuforge import reference
from mcuforge.codegen import generate
from mcuforge.compress.storage import float_weights_of, quantize_weights_to_bits, share_weights, weight_flash_bytes
from mcuforge.frontends import from_ir_layout, to_ir_layout
from mcuforge.frontends.torch import load_pt2
from mcuforge.quant.ptq import quantize
from mcuforge.targets.bench import bench
from mcuforge.targets.host import run_host
from mcuforge.targets.table import get_target

ROOT = Path(__file__).resolve().parent
M4 = get_target("cortex-m4")


def accuracy(q, x, y) -> tuple[float, np.ndarray, np.ndarray]:
    name, out = q.inputs[0], q.outputs[0]
    xq = q.tensors[name].quant.quantize(to_ir_layout(q, name, x))
    yq = np.concatenate([reference.run(q, [xq[i:i + 64]], mode="int")[0] for i in range(0, len(xq), 64)])
    pred = from_ir_layout(q, out, q.tensors[out].quant.dequantize(yq))
    return float(np.mean(np.argmax(pred, -1) == y)), xq, yq


def measure(label: str, q, x, y, work: Path, qemu_samples: int, extra: dict) -> dict:
    acc, xq, yq = accuracy(q, x, y)
    extra_acc = {name: accuracy(q, xe, ye)[0] for name, (xe, ye) in extra.items()}
    lib = work / label
    generate(q, lib)
    y_c = run_host(lib, [xq])[0]
    acc_c = float(np.mean(np.argmax(from_ir_layout(q, q.outputs[0], q.tensors[q.outputs[0]].quant.dequantize(y_c)),
                                    -1) == y))
    m4lib = work / (label + "_m4")
    report = generate(q, m4lib, target=M4)
    b = bench(m4lib, M4, [xq[:qemu_samples]], samples=qemu_samples)
    flash = weight_flash_bytes(q)
    return {
        "variant": label, "weight_flash_bytes": int(sum(flash.values())), "per_layer_flash": flash,
        "accuracy_int8_reference": acc, "accuracy_host_c": acc_c, "accuracy_int8_reference_other_splits": extra_acc,
        "host_c_vs_reference_mismatches": int(np.count_nonzero(y_c != yq)), "outputs_compared": int(yq.size),
        "m4_instructions_per_inference": b["instructions"]["per_inference"],
        "m4_model_constants_bytes": b["flash"]["model_constants"], "m4_scratch_bytes": report["memory"]["scratch_bytes"],
        "m4_layers": [{"name": r["name"], "instructions": r["instructions"]} for r in b["layers"]],
    }


def other_splits(d: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The model's val and other held-out splits (e.g. keywords' new_speakers), model inputs and labels."""
    from mcuforge import data as datasets
    from mcuforge.zoo import get, model_inputs

    ck = torch.load(d / "model.pt", weights_only=False)
    spec = get(ck["model"])
    out = {}
    for split in datasets.describe()[ck["data"]]["splits"]:
        if split not in ("train", "test"):
            ds = datasets.load(ck["data"], split, ck["preset"], seed=ck["seed"])
            out[split] = (model_inputs(spec, ds.x), ds.y)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ds_cnn")
    ap.add_argument("--dir", type=Path, default=None, help="trained zoo model (default out/ws_<model>)")
    ap.add_argument("--qat-epochs", type=int, default=3)
    ap.add_argument("--qemu-samples", type=int, default=2)
    ap.add_argument("--json", type=Path, default=ROOT / "results" / "weight_storage.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    console = Console(width=170)
    d = args.dir or Path("out") / f"ws_{args.model}"
    if not (d / "model.pt2").is_file():
        subprocess.run([sys.executable, "-m", "mcuforge", "train", args.model, "--preset", "small", "-o", str(d)],
                       check=True)
    t0 = time.perf_counter()
    x, y = np.load(d / "test_inputs.npy"), np.load(d / "test_targets.npy")
    extra = other_splits(d)
    graph = load_pt2(d / "model.pt2")
    calib = [to_ir_layout(graph, graph.inputs[0], np.load(d / "calib.npy"))]
    q8 = quantize(graph, calib)
    layers = [n.name for n in q8.nodes if n.op in ("conv2d", "fully_connected")]
    fw = float_weights_of(graph)
    variants = [
        ("int8", q8),
        ("int4 (packed)", quantize_weights_to_bits(q8, {n: 4 for n in layers}, fw)),
        ("4-bit codebook (k=16)", share_weights(q8, {n: 16 for n in layers})),
        ("2-bit (packed)", quantize_weights_to_bits(q8, {n: 2 for n in layers}, fw)),
    ]
    if args.qat_epochs > 0:
        from mcuforge.compress.finetune import finetune_low_bit

        for bits in (4, 2):
            qq = finetune_low_bit(d, bits, epochs=args.qat_epochs)
            variants.append((f"int{bits} + QAT {args.qat_epochs} ep", qq))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, q in variants:
            console.print(f"[dim]{label} ...[/]")
            rows.append(measure(label.split(" (")[0].replace(" ", "_").replace("+", "").replace("__", "_"), q, x, y,
                                Path(tmp), args.qemu_samples, extra) | {"label": label})
    base = rows[0]
    table = Table(title=f"{args.model} on its test split ({len(y)} samples): compressed weight storage")
    names = "/".join(extra)
    for col in ("weights", "weight flash B", "vs int8", "int8 ref acc", "host C acc", "C == ref", f"ref acc {names}",
                "M4 instr/inference", "vs int8", "M4 .rodata B", "scratch B"):
        table.add_column(col, justify="left" if col == "weights" else "right")
    for r in rows:
        table.add_row(r["label"], f"{r['weight_flash_bytes']:,}", f"{base['weight_flash_bytes'] / r['weight_flash_bytes']:.2f}x",
                      f"{100 * r['accuracy_int8_reference']:.2f}%", f"{100 * r['accuracy_host_c']:.2f}%",
                      "yes" if r["host_c_vs_reference_mismatches"] == 0 else f"NO ({r['host_c_vs_reference_mismatches']})",
                      " / ".join(f"{100 * v:.2f}%" for v in r["accuracy_int8_reference_other_splits"].values()),
                      f"{r['m4_instructions_per_inference']:,.0f}",
                      f"{r['m4_instructions_per_inference'] / base['m4_instructions_per_inference']:.2f}x",
                      f"{r['m4_model_constants_bytes']:,}", f"{r['m4_scratch_bytes']:,}")
    console.print(table)
    result = {"model": args.model, "dir": str(d), "test_samples": int(len(y)), "qat_epochs": args.qat_epochs,
              "other_splits": {k: int(len(v[1])) for k, v in extra.items()},
              "python": platform.python_version(), "wall_s": time.perf_counter() - t0, "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
