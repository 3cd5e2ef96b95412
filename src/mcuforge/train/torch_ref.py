"""The IR's float semantics as a trainable torch module: the float32 fine-tuning baseline.

`IRModule(graph)` runs a float IR graph (or a quantized one, on its dequantized constants)
with the conv/fc weights and biases as parameters, in the IR's layout (NHWC), so that
float32 fine-tuning updates exactly the parameters that on-device training updates
(BatchNorm folded, activations fused), on the same samples in the same order.
"""

from __future__ import annotations

import numpy as np

from ..errors import GraphError
from ..ir.graph import Graph


def _float_const(graph: Graph, name: str) -> np.ndarray:
    return graph.tensors[name].float_data().astype(np.float32)


class IRModule:  # built lazily so that importing mcuforge.train does not import torch
    def __new__(cls, graph: Graph, trainable: list[str] | None = None):
        import torch
        import torch.nn as nn
        import torch.nn.functional as F

        class _M(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.graph = graph
                self.params = nn.ParameterDict()
                self.keys: dict[str, str] = {}
                for n in graph.nodes:
                    for t in n.inputs[1:]:
                        if t and graph.tensors[t].is_const and n.op in ("conv2d", "fully_connected"):
                            key = f"p{len(self.keys)}"
                            self.keys[t] = key
                            self.params[key] = nn.Parameter(torch.from_numpy(_float_const(graph, t).copy()),
                                                            requires_grad=trainable is None or n.name in trainable)

            def const(self, t: str):
                if t in self.keys:
                    return self.params[self.keys[t]]
                return torch.from_numpy(_float_const(graph, t))

            def forward(self, x):
                vals = {graph.inputs[0]: x}
                for n in graph.nodes:
                    a = n.attrs
                    xs = [self.const(t) if graph.tensors[t].is_const else vals[t] for t in n.inputs if t]
                    if n.op == "conv2d":
                        pt, pb, pl, pr = a["pads"]
                        xin = F.pad(xs[0].permute(0, 3, 1, 2), (pl, pr, pt, pb))
                        w = xs[1].permute(0, 3, 1, 2)
                        y = F.conv2d(xin, w, xs[2] if len(xs) > 2 else None, stride=tuple(a["stride"]),
                                     dilation=tuple(a["dilation"]), groups=int(a["groups"])).permute(0, 2, 3, 1)
                    elif n.op == "fully_connected":
                        y = F.linear(xs[0], xs[1], xs[2] if len(xs) > 2 else None)
                    elif n.op in ("max_pool2d", "avg_pool2d"):
                        pt, pb, pl, pr = a["pads"]
                        xin = xs[0].permute(0, 3, 1, 2)
                        if n.op == "max_pool2d":
                            xin = F.pad(xin, (pl, pr, pt, pb), value=-float("inf"))
                            y = F.max_pool2d(xin, tuple(a["kernel"]), tuple(a["stride"]))
                        else:
                            if any(a["pads"]) and not a.get("count_include_pad"):
                                raise GraphError(f"node '{n.name}': avg pool without padding in the count")
                            xin = F.pad(xin, (pl, pr, pt, pb))
                            y = F.avg_pool2d(xin, tuple(a["kernel"]), tuple(a["stride"]))
                        y = y.permute(0, 2, 3, 1)
                    elif n.op == "reshape":
                        y = xs[0].reshape((xs[0].shape[0],) + tuple(a["shape"][1:]))
                    elif n.op == "add":
                        y = xs[0] + xs[1]
                    elif n.op == "softmax":
                        y = torch.softmax(xs[0] * float(a.get("beta", 1.0)), dim=-1)
                    else:
                        raise GraphError(f"node '{n.name}' ({n.op}): not supported by the float training baseline")
                    lo, hi = a.get("act_min"), a.get("act_max")
                    if lo is not None or hi is not None:
                        y = torch.clamp(y, min=lo, max=hi)
                    vals[n.outputs[0]] = y
                return vals[graph.outputs[0]]

            def weight(self, tensor: str) -> np.ndarray:
                return self.params[self.keys[tensor]].detach().numpy().copy()

        return _M()


def finetune_float(graph: Graph, x: np.ndarray, y: np.ndarray, trainable: list[str], lr: float,
                   momentum: float = 0.0, loss: str = "ce", lr_halve_every: int = 0, on_step=None):
    """SGD, batch 1, over the samples in order (x float32 in the IR layout); returns the module.

    With a softmax at the end, cross-entropy is taken on its input (the logits), as on device."""
    import torch

    torch.manual_seed(0)
    m = IRModule(graph, trainable)
    if graph.producer(graph.outputs[0]).op == "softmax":
        inner = graph.copy()
        sm = inner.producer(inner.outputs[0])
        inner.outputs = [sm.inputs[0]]
        inner.prune()
        m = IRModule(inner, trainable)
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum)
    xt = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    lf = torch.nn.CrossEntropyLoss() if loss == "ce" else torch.nn.MSELoss()
    for i in range(len(xt)):
        if lr_halve_every:
            for grp in opt.param_groups:
                grp["lr"] = lr * 0.5 ** min(i // lr_halve_every, 24)
        opt.zero_grad()
        out = m(xt[i:i + 1])
        target = torch.tensor([int(y[i])]) if loss == "ce" else torch.from_numpy(np.asarray(y[i:i + 1], np.float32))
        value = lf(out.reshape(1, -1), target.reshape(1, -1) if loss == "mse" else target)
        value.backward()
        opt.step()
        if on_step is not None:
            on_step(i, float(value))
    return m.eval()
