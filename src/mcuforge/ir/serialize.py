"""Save and load graphs: one ``.mcf`` file, a zip archive holding

* ``graph.json`` -- format version, graph name, inputs, outputs, meta, tensors
  (name, shape, dtype, quantization, and for constants the archive member that
  holds the data) and nodes (name, op, inputs, outputs, attributes), in
  topological order;
* ``data/<index>.npy`` -- one numpy array per constant tensor.

See docs/ir-format.md.
"""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..errors import ModelFormatError
from .graph import Graph, Node, QuantParams, Tensor

FORMAT = "mcuforge-graph"
VERSION = 1


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def save_graph(graph: Graph, path: str | Path) -> None:
    tensors = []
    arrays: dict[str, np.ndarray] = {}
    for i, t in enumerate(graph.tensors.values()):
        entry = {"name": t.name, "shape": list(t.shape), "dtype": t.dtype,
                 "quant": t.quant.to_json() if t.quant is not None else None, "data": None}
        if t.data is not None:
            member = f"data/{i}.npy"
            entry["data"] = member
            arrays[member] = t.data
        tensors.append(entry)
    doc = {
        "format": FORMAT, "version": VERSION, "name": graph.name,
        "inputs": graph.inputs, "outputs": graph.outputs, "meta": _jsonable(graph.meta),
        "tensors": tensors,
        "nodes": [{"name": n.name, "op": n.op, "inputs": n.inputs, "outputs": n.outputs,
                   "attrs": _jsonable(n.attrs)} for n in graph.nodes],
    }
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("graph.json", json.dumps(doc, indent=1))
        for member, arr in arrays.items():
            buf = io.BytesIO()
            np.save(buf, arr, allow_pickle=False)
            zf.writestr(member, buf.getvalue())


def load_graph(path: str | Path) -> Graph:
    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f"{path}: no such file")
    try:
        with zipfile.ZipFile(path) as zf:
            doc = json.loads(zf.read("graph.json"))
            if not isinstance(doc, dict) or doc.get("format") != FORMAT:
                raise ModelFormatError(f"{path}: not an mcuforge graph (graph.json holds no mcuforge-graph document)")
            if doc.get("version") != VERSION:
                raise ModelFormatError(f"{path}: graph format version {doc.get('version')} is not supported "
                                       f"(this mcuforge reads version {VERSION})")
            g = Graph(doc["name"])
            g.inputs, g.outputs, g.meta = doc["inputs"], doc["outputs"], doc["meta"]
            for e in doc["tensors"]:
                data = None
                if e["data"] is not None:
                    data = np.load(io.BytesIO(zf.read(e["data"])), allow_pickle=False)
                quant = QuantParams.from_json(e["quant"]) if e["quant"] else None
                g.add_tensor(Tensor(e["name"], tuple(e["shape"]), e["dtype"], quant, data))
            for e in doc["nodes"]:
                g.nodes.append(Node(e["name"], e["op"], e["inputs"], e["outputs"], e["attrs"]))
    except ModelFormatError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, KeyError, ValueError, TypeError,
            AttributeError, OSError) as exc:  # every way a damaged archive or document can fail to read
        raise ModelFormatError(f"{path}: corrupt mcuforge graph file ({type(exc).__name__}: {exc})") from exc
    g.validate()
    return g
