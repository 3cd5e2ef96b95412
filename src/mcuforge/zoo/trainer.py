"""Host training for the zoo (and the demo), export, and int8 evaluation of the deployed library.

``fit``      the one training loop: Adam, cosine learning-rate decay, seeded shuffling;
             cross-entropy (classification), MSE (regression), reconstruction MSE (autoencoder).
``train``    data set -> trained model -> directory with model.pt (state_dict checkpoint),
             model.pt2 (torch.export program, SincConv fixed, ready for `mcuforge deploy`),
             calib.npy, test inputs/targets and metrics.json.
``deploy_and_evaluate``  quantizes that directory's model, generates the C library (lib/), runs the
             integer reference over the test split, checks host C == reference on a batch and
             adds the int8 metrics and the library's costs to metrics.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from . import ModelSpec, ZooError, _n_out, check_data, get, model_inputs

LOSSES = {"classification": "ce", "regression": "mse", "autoencoder": "ae"}


def fit(model, x: np.ndarray, y: np.ndarray | None, loss: str = "ce", epochs: int = 10, seed: int = 0,
        lr: float = 3e-3, batch: int = 64, progress: Callable | None = None, on_step: Callable | None = None,
        max_steps: int | None = None, weight_decay: float = 0.0):
    """Train `model` in place and return it in eval mode.

    loss: ce (y: class indices), mse (y: targets), ae (reconstruct x; y unused).
    progress(epoch, last_loss) after each epoch; on_step(step, total_steps, loss) after each step.
    max_steps ends training early (smoke tests)."""
    import torch

    torch.manual_seed(seed)
    xt = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    yt = None if loss == "ae" else torch.from_numpy(np.ascontiguousarray(y))
    if loss == "mse":
        yt = yt.float()
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    loss_fn = torch.nn.CrossEntropyLoss() if loss == "ce" else torch.nn.MSELoss()
    gen = torch.Generator().manual_seed(seed)
    per_epoch = (len(xt) + batch - 1) // batch
    total = per_epoch * epochs if max_steps is None else min(per_epoch * epochs, max_steps)
    step, value = 0, float("nan")
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), batch):
            idx = perm[i:i + batch]
            if len(idx) < 2 and len(xt) > 1:
                continue  # batch norm needs two samples
            opt.zero_grad()
            out = model(xt[idx])
            value_t = loss_fn(out, xt[idx] if loss == "ae" else yt[idx])
            value_t.backward()
            opt.step()
            step += 1
            value = value_t.item()
            if on_step is not None:
                on_step(step, total, value)
            if step >= total:
                break
        sched.step()
        if progress is not None:
            progress(epoch + 1, value)
        if step >= total:
            break
    return model.eval()


def predict(model, x: np.ndarray, batch: int = 256) -> np.ndarray:
    import torch

    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            outs.append(model(torch.from_numpy(np.ascontiguousarray(x[i:i + batch], np.float32))).numpy())
    return np.concatenate(outs) if outs else np.zeros((0,), np.float32)


def evaluate(task: str, pred: np.ndarray, x: np.ndarray, y: np.ndarray, meta: dict,
             groups: np.ndarray | None = None) -> dict:
    """accuracy (classification); mae/rmse in target units (regression); AUC of the
    reconstruction error, averaged per clip where `groups` are given (autoencoder)."""
    if task == "classification":
        return {"accuracy": float(np.mean(np.argmax(pred, axis=-1) == y))}
    if task == "regression":
        scale = np.asarray(meta.get("y_scale", 1.0), np.float64)
        err = (pred.reshape(y.shape).astype(np.float64) - y) * scale
        out = {"mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err ** 2)))}
        names = meta.get("targets")
        if names and err.ndim == 2:
            out["mae_per_target"] = {n: float(v) for n, v in zip(names, np.mean(np.abs(err), axis=0))}
        return out
    score = np.mean((pred.reshape(len(x), -1).astype(np.float64) - x.reshape(len(x), -1)) ** 2, axis=1)
    labels = y
    if groups is not None:
        ids = np.unique(groups)
        score = np.array([score[groups == g].mean() for g in ids])
        labels = np.array([y[groups == g].max() for g in ids])
    out = {"reconstruction_mse": float(np.mean(score[labels == 0])) if np.any(labels == 0) else float("nan")}
    if len(np.unique(labels)) == 2:
        from sklearn.metrics import roc_auc_score

        out["auc"] = float(roc_auc_score(labels, score))
    return out


PRIMARY = {"classification": "accuracy", "regression": "mae", "autoencoder": "auc"}


def _jsonable(meta: dict) -> dict:
    return json.loads(json.dumps(meta, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def train(model: str, data: str | None = None, preset: str = "small", out: str | Path | None = None,
          epochs: int | None = None, seed: int = 0, root: str | Path | None = None, max_steps: int | None = None,
          lr: float | None = None, batch: int | None = None, on_step: Callable | None = None,
          on_phase: Callable[[str], None] | None = None, calib_size: int = 256) -> dict:
    """Train zoo model `model` on `data` (default: the model's) and write `out` (see module doc).
    Returns the metrics dict (also written to out/metrics.json)."""
    import torch

    from .. import data as datasets
    from ..outdir import staged_output_dir
    from .sinc import fix_sinc

    spec: ModelSpec = get(model)
    data = data or spec.data
    check_data(spec, data)
    phase = on_phase or (lambda s: None)
    out = Path(out or f"out/{model}")
    t0 = time.perf_counter()
    phase(f"loading {data} ({preset})")
    tr = datasets.load(data, "train", preset, root=root, seed=seed)
    te = datasets.load(data, "test", preset, root=root, seed=seed)
    splits = datasets.describe()[data]["splits"]
    va = datasets.load(data, "val", preset, root=root, seed=seed) if "val" in splits else None
    if spec.task == "classification" and tr.y.ndim != 1 or spec.task == "regression" and tr.meta.get(
            "task") != "regression":
        raise ZooError(f"data set '{data}' is not a {spec.task} data set")
    x_tr, x_te = model_inputs(spec, tr.x), model_inputs(spec, te.x)
    x_va = model_inputs(spec, va.x) if va is not None else None
    t_data = time.perf_counter() - t0

    torch.manual_seed(seed)
    net = spec.build(x_tr.shape[1:], _n_out(tr, spec.task))
    n_epochs = int(epochs or spec.epochs[preset])
    phase(f"training {model}")
    t1 = time.perf_counter()
    history: list[float] = []
    fit(net, x_tr, tr.y, LOSSES[spec.task], n_epochs, seed, lr or spec.lr, batch or spec.batch,
        progress=lambda e, loss: history.append(loss), on_step=on_step, max_steps=max_steps,
        weight_decay=spec.weight_decay)
    t_train = time.perf_counter() - t1

    groups = te.info.get("clip") if spec.task == "autoencoder" else None
    metrics = {
        "model": model, "task": spec.task, "data": data, "preset": preset, "seed": seed, "epochs": n_epochs,
        "max_steps": max_steps, "params": int(sum(p.numel() for p in net.parameters())),
        "input_shape": list(x_tr.shape[1:]), "samples": {"train": len(tr), "test": len(te)},
        "train_loss": history, "timings": {"data_s": t_data, "train_s": t_train},
        "float": {"test": evaluate(spec.task, predict(net, x_te), x_te, te.y, te.meta, groups)},
        "data_meta": _jsonable({k: v for k, v in te.meta.items() if k in (
            "classes", "targets", "y_scale", "y_offset", "source", "sample_rate", "fs")}),
    }
    if va is not None:
        metrics["samples"]["val"] = len(va)
        metrics["float"]["val"] = evaluate(spec.task, predict(net, x_va), x_va, va.y, va.meta,
                                           va.info.get("clip") if spec.task == "autoencoder" else None)
    for extra in (s for s in splits if s not in ("train", "val", "test")):  # e.g. keywords' new_speakers
        ds = datasets.load(data, extra, preset, root=root, seed=seed)
        xe = model_inputs(spec, ds.x)
        metrics["float"][extra] = evaluate(spec.task, predict(net, xe), xe, ds.y, ds.meta,
                                           ds.info.get("clip") if spec.task == "autoencoder" else None)
    phase("exporting")
    deployable = fix_sinc(net).eval()  # a copy: `net` keeps its SincConv for the checkpoint
    if hasattr(deployable, "for_export"):
        deployable = deployable.for_export().eval()
    example = torch.from_numpy(x_tr[:1])
    ep = torch.export.export(deployable, (example,))
    rng = np.random.default_rng(seed)
    calib = x_tr[np.sort(rng.choice(len(x_tr), min(calib_size, len(x_tr)), replace=False))]
    with staged_output_dir(out) as stage:
        torch.save({"model": model, "state_dict": net.state_dict(), "input_shape": list(x_tr.shape[1:]),
                    "n_out": _n_out(tr, spec.task), "data": data, "preset": preset, "seed": seed}, stage / "model.pt")
        torch.export.save(ep, stage / "model.pt2")
        np.save(stage / "calib.npy", calib)
        np.save(stage / "test_inputs.npy", x_te)
        np.save(stage / "test_targets.npy", te.y)
        if groups is not None:
            np.save(stage / "test_groups.npy", groups)
        (stage / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def deploy_and_evaluate(out: str | Path, method: str = "minmax", host_samples: int = 32,
                        limit: int | None = None) -> dict:
    """Quantize out/model.pt2 with out/calib.npy, write out/lib, evaluate int8 on the test split
    (numpy integer reference), check host C == reference on `host_samples` inputs, and add
    the results to out/metrics.json. Returns the updated metrics."""
    from .. import reference
    from ..codegen import generate
    from ..frontends import from_ir_layout, to_ir_layout
    from ..frontends.torch import load_pt2
    from ..quant.ptq import quantize
    from ..targets.host import run_host

    out = Path(out)
    metrics = json.loads((out / "metrics.json").read_text())
    task = metrics["task"]
    x = np.load(out / "test_inputs.npy")
    y = np.load(out / "test_targets.npy")
    groups = np.load(out / "test_groups.npy") if (out / "test_groups.npy").is_file() else None
    if limit is not None and len(x) > limit:
        keep = np.arange(limit) if groups is None else np.nonzero(np.isin(groups, np.unique(groups)[:limit]))[0]
        x, y, groups = x[keep], y[keep], None if groups is None else groups[keep]
    t0 = time.perf_counter()
    graph = load_pt2(out / "model.pt2")
    name = graph.inputs[0]
    q = quantize(graph, [to_ir_layout(graph, name, np.load(out / "calib.npy"))], method=method)
    report = generate(q, out / "lib", prefix=c_prefix(metrics["model"]))
    t_deploy = time.perf_counter() - t0
    xq = q.tensors[name].quant.quantize(to_ir_layout(q, name, x))
    out_name = q.outputs[0]
    yq = np.concatenate([reference.run(q, [xq[i:i + 64]], mode="int")[0] for i in range(0, len(xq), 64)])
    pred = from_ir_layout(q, out_name, q.tensors[out_name].quant.dequantize(yq))
    n_host = min(host_samples, len(xq))
    y_c = run_host(out / "lib", [xq[:n_host]])[0]
    mismatches = int(np.count_nonzero(y_c != yq[:n_host]))
    metrics["int8"] = {"test": evaluate(task, pred, x, y, metrics["data_meta"], groups),
                       "method": method, "c_vs_reference_mismatches": mismatches,
                       "c_outputs_compared": int(y_c.size)}
    t, m = report["totals"], report["memory"]
    metrics["deployed"] = {"macs": int(t["macs"]), "params": int(t["params"]), "weight_bytes": int(t["weight_bytes"]),
                           "const_bytes": int(t["const_bytes"]), "arena_bytes": int(m["arena_bytes"]),
                           "layers": len(report["layers"]), "deploy_s": t_deploy}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def c_prefix(model: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in model)
