"""Graph-to-graph rewrites on float graphs, shared by all frontends.

Every public pass is pure: it returns a rewritten copy and leaves its argument
alone. The passes never rename graph inputs or outputs (a node that disappears
hands its output name to the node that takes over its work), so facts keyed by
those names (``graph.meta["io"]``) stay valid.

* ``fold_batch_norm``   -- removes every ``batch_norm`` node (a frontend-only
  op, see ``BATCH_NORM``): folded into the conv2d/fully_connected that feeds it,
  else replaced by a depthwise 1x1 conv2d.
* ``fuse_activations``  -- folds a ``clamp`` into the op that produces its input
  (act_min/act_max), so relu/relu6 cost nothing at run time.
* ``simplify``          -- removes identity ops, turns transposes that move only
  unit dimensions into reshapes, merges chains of reshapes and of transposes,
  and folds a flatten-transpose in front of a fully_connected into its weights.
* ``optimize``          -- all of the above, then prune and sort.
"""

from __future__ import annotations

import numpy as np

from .errors import GraphError
from .ir.graph import Graph, Node, Tensor
from .ops import OPS

# A frontend-only op: y = x * scale + shift, per channel along the LAST axis.
# inputs: x, scale [C], shift [C] (float constants). It has no reference, no
# kernel and no registry entry: `fold_batch_norm` must remove it before the graph
# is validated. Frontends precompute scale = gamma / sqrt(var + eps) and
# shift = beta - mean * scale.
BATCH_NORM = "batch_norm"


# --- small graph helpers -----------------------------------------------------------------

def _sole_consumer(graph: Graph, tensor: str, node: Node) -> bool:
    """`node` is the only reader of `tensor`, and `tensor` is not a graph output."""
    return tensor not in graph.outputs and graph.consumers(tensor) == [node]


def _take_over_output(graph: Graph, producer: Node, node: Node) -> None:
    """Remove `node` (which reads producer's output only) and let `producer` write
    `node`'s output instead; the intermediate tensor disappears."""
    old = producer.outputs[0]
    producer.outputs[0] = node.outputs[0]
    graph.remove_node(node)
    del graph.tensors[old]


def _bypass(graph: Graph, node: Node) -> bool:
    """Remove a node whose output equals its input 0 (same shape, same values).

    Returns False where that would rename a graph input or output (the node then
    stays: it is the copy that makes the output a tensor of its own)."""
    x, y = node.inputs[0], node.outputs[0]
    if graph.tensors[x].shape != graph.tensors[y].shape:
        raise GraphError(f"internal: cannot bypass '{node.name}', it changes the shape")
    if y not in graph.outputs:
        graph.remove_node(node)
        graph.replace_uses(y, x)
        del graph.tensors[y]
        return True
    producer = graph.producer(x)
    if producer is None or x in graph.outputs:
        return False
    # y is a graph output: keep its name, let x's producer write it directly.
    graph.remove_node(node)
    producer.outputs[producer.outputs.index(x)] = y
    for n in graph.nodes:
        n.inputs = [y if t == x else t for t in n.inputs]
    del graph.tensors[x]
    return True


def _const_data(graph: Graph, name: str) -> np.ndarray | None:
    t = graph.tensors[name] if name else None
    return t.data if t is not None and t.is_const and t.dtype == "float32" else None


def _new_tensor(graph: Graph, base: str, shape) -> str:
    name = graph.unique_name(base)
    graph.add_tensor(Tensor(name, tuple(shape)))
    return name


# --- batch norm ----------------------------------------------------------------------------

def _fold_batch_norm(graph: Graph) -> None:
    """Remove every batch_norm node: fold it into the conv2d/fully_connected that feeds
    only it, else turn it into a depthwise 1x1 conv2d."""
    for bn in [n for n in graph.nodes if n.op == BATCH_NORM]:
        x = bn.inputs[0]
        scale, shift = _const_data(graph, bn.inputs[1]), _const_data(graph, bn.inputs[2])
        if scale is None or shift is None:
            raise GraphError(f"node '{bn.name}' (batch_norm): scale and shift must be float constants")
        scale, shift = scale.astype(np.float64), shift.astype(np.float64)
        producer = graph.producer(x)
        if (producer is not None and producer.op in ("conv2d", "fully_connected")
                and producer.attrs.get("act_min") is None and producer.attrs.get("act_max") is None
                and _sole_consumer(graph, x, bn)
                and _const_data(graph, producer.inputs[1]) is not None
                and graph.tensors[producer.inputs[1]].shape[0] == scale.shape[0]):
            _fold_into_producer(graph, producer, bn, scale, shift)
        else:
            _batch_norm_to_depthwise(graph, bn, scale, shift)


def _fold_into_producer(graph: Graph, producer: Node, bn: Node, scale, shift) -> None:
    """W'[o] = W[o] * scale[o], b' = b * scale + shift (new constants: W may be shared)."""
    w = _const_data(graph, producer.inputs[1]).astype(np.float64)
    has_bias = len(producer.inputs) > 2 and producer.inputs[2]
    b = _const_data(graph, producer.inputs[2]).astype(np.float64) if has_bias else np.zeros(w.shape[0])
    w_new = w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
    b_new = b * scale + shift
    producer.inputs[1] = graph.add_const(producer.name + "_weight_bn", w_new.astype(np.float32))
    bias_name = graph.add_const(producer.name + "_bias_bn", b_new.astype(np.float32))
    if has_bias:
        producer.inputs[2] = bias_name
    else:
        producer.inputs[2:] = [bias_name]
    _take_over_output(graph, producer, bn)


def _batch_norm_to_depthwise(graph: Graph, bn: Node, scale, shift) -> None:
    """A depthwise 1x1 conv2d (per-channel weights keep per-channel quantization).
    Inputs of rank != 4 are viewed as [1, 1, M, C] by free reshapes around it."""
    x, y = bn.inputs[0], bn.outputs[0]
    shape = graph.tensors[x].shape
    c = shape[-1]
    idx = graph.nodes.index(bn)
    graph.remove_node(bn)
    w = graph.add_const(bn.name + "_scale", scale.reshape(c, 1, 1, 1).astype(np.float32))
    b = graph.add_const(bn.name + "_shift", shift.astype(np.float32))
    attrs = dict(stride=[1, 1], dilation=[1, 1], pads=[0, 0, 0, 0], groups=c)
    new: list[Node] = []
    if len(shape) == 4:
        new.append(Node(graph.unique_name(bn.name), "conv2d", [x, w, b], [y], attrs))
    else:
        flat = (1, 1, int(np.prod(shape[1:-1])), c)
        x4 = _new_tensor(graph, x + "_4d", flat)
        y4 = _new_tensor(graph, y + "_4d", flat)
        new.append(Node(graph.unique_name(bn.name + "_to4d"), "reshape", [x], [x4], {"shape": list(flat)}))
        new.append(Node(graph.unique_name(bn.name), "conv2d", [x4, w, b], [y4], attrs))
        new.append(Node(graph.unique_name(bn.name + "_from4d"), "reshape", [y4], [y], {"shape": list(shape)}))
    graph.nodes[idx:idx] = new


# --- activation fusion ---------------------------------------------------------------------

def _intersect(lo1, hi1, lo2, hi2):
    lo = lo2 if lo1 is None else lo1 if lo2 is None else max(lo1, lo2)
    hi = hi2 if hi1 is None else hi1 if hi2 is None else min(hi1, hi2)
    return lo, hi


def _fuse_activations(graph: Graph) -> None:
    """Fold each clamp into its producer's act_min/act_max (or into a producing clamp)
    where the producer's output feeds only the clamp and is not a graph output."""
    for clamp in [n for n in graph.nodes if n.op == "clamp"]:
        x = clamp.inputs[0]
        producer = graph.producer(x)
        if producer is None or not _sole_consumer(graph, x, clamp):
            continue
        if producer.op == "clamp":
            keys = ("min", "max")
        elif OPS.get(producer.op) is not None and OPS[producer.op].fusable_activation:
            keys = ("act_min", "act_max")
        else:
            continue
        lo, hi = _intersect(producer.attrs.get(keys[0]), producer.attrs.get(keys[1]),
                            clamp.attrs.get("min"), clamp.attrs.get("max"))
        if lo is not None and hi is not None and lo > hi:
            continue  # disjoint ranges: the result is a constant; leave both ops
        producer.attrs[keys[0]] = None if lo is None else float(lo)
        producer.attrs[keys[1]] = None if hi is None else float(hi)
        _take_over_output(graph, producer, clamp)


# --- layout and identity clean-up -------------------------------------------------------------

def _moves_only_unit_dims(shape, perm) -> bool:
    """The transpose keeps the order of all non-unit dimensions: it is a reshape."""
    kept = [p for p in perm if shape[p] != 1]
    return kept == sorted(kept)


def _fold_transpose_into_fc(graph: Graph, reshape: Node) -> bool:
    """transpose -> reshape [1, K] -> fully_connected(s) with constant weights:
    permute the weights' columns instead and drop the transpose (the flatten of
    an NHWC tensor in torch's NCHW element order costs no copy)."""
    r = reshape.outputs[0]
    tr = graph.producer(reshape.inputs[0])
    if tr is None or tr.op != "transpose" or not _sole_consumer(graph, reshape.inputs[0], reshape):
        return False
    if len(graph.tensors[r].shape) != 2 or r in graph.outputs:
        return False
    fcs = graph.consumers(r)
    if not fcs or any(n.op != "fully_connected" or n.inputs[0] != r or r in n.inputs[1:]
                      or _const_data(graph, n.inputs[1]) is None for n in fcs):
        return False
    x = tr.inputs[0]
    shape = graph.tensors[x].shape
    # idx[i]: position in x's element order of element i of the transposed tensor
    idx = np.arange(int(np.prod(shape))).reshape(shape).transpose(tr.attrs["perm"]).ravel()
    for fc in fcs:
        w = _const_data(graph, fc.inputs[1])
        w_new = np.empty_like(w)
        w_new[:, idx] = w
        # a column permutation keeps per-output-channel quantization (imported QDQ weights)
        fc.inputs[1] = graph.add_const(fc.name + "_weight_perm", w_new, quant=graph.tensors[fc.inputs[1]].quant)
    reshape.inputs[0] = x
    return True


def _simplify_once(graph: Graph) -> bool:
    for node in list(graph.nodes):
        op = node.op
        x = node.inputs[0] if node.inputs else None
        if op == "transpose":
            perm = [int(p) for p in node.attrs["perm"]]
            producer = graph.producer(x)
            if perm == sorted(perm):
                if _bypass(graph, node):
                    return True
            elif producer is not None and producer.op == "transpose":
                # y = x.T(p1).T(p2): axis j of y is axis p1[p2[j]] of x
                p1 = producer.attrs["perm"]
                node.inputs[0] = producer.inputs[0]
                node.attrs["perm"] = [int(p1[p]) for p in perm]
                return True
            elif _moves_only_unit_dims(graph.tensors[x].shape, perm):
                node.op = "reshape"
                node.attrs = {"shape": list(graph.tensors[node.outputs[0]].shape)}
                return True
        elif op == "reshape":
            producer = graph.producer(x)
            if graph.tensors[x].shape == graph.tensors[node.outputs[0]].shape:
                if _bypass(graph, node):
                    return True
            elif producer is not None and producer.op == "reshape":
                node.inputs[0] = producer.inputs[0]
                return True
            elif _fold_transpose_into_fc(graph, node):
                return True
        elif op == "concat" and len(node.inputs) == 1:
            if _bypass(graph, node):
                return True
        elif op == "clamp" and node.attrs.get("min") is None and node.attrs.get("max") is None:
            if _bypass(graph, node):
                return True
    return False


def _simplify(graph: Graph) -> None:
    """Remove identity ops and redundant data movement, until nothing changes."""
    while _simplify_once(graph):
        graph.prune()


# --- public API ------------------------------------------------------------------------------

def _on_copy(graph: Graph, rewrite) -> Graph:
    g = graph.copy()
    rewrite(g)
    g.prune()
    return g


def fold_batch_norm(graph: Graph) -> Graph:
    """A copy without batch_norm nodes (folded into their producer, or depthwise convs)."""
    return _on_copy(graph, _fold_batch_norm)


def fuse_activations(graph: Graph) -> Graph:
    """A copy with clamps folded into the ops that produce their inputs."""
    return _on_copy(graph, _fuse_activations)


def simplify(graph: Graph) -> Graph:
    """A copy without identity ops and redundant transposes/reshapes."""
    return _on_copy(graph, _simplify)


def optimize(graph: Graph) -> Graph:
    """Fold batch norms, simplify layout ops, fuse activations; prune and sort."""
    g = graph.copy()
    inputs, outputs = list(g.inputs), list(g.outputs)
    _fold_batch_norm(g)
    g.prune()
    _simplify(g)
    _fuse_activations(g)
    _simplify(g)
    g.prune()
    g.toposort()
    if g.inputs != inputs or g.outputs != outputs:
        raise GraphError("internal: a pass renamed a graph input or output")
    return g
