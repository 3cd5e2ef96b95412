"""TFLite exporter: a quantized mcuforge graph -> an int8 .tflite flatbuffer that TFLM runs.

The flatbuffer is built with the object API of the schema that tflite-micro ships.
Every IR op maps to the TFLite op(s) with the same integer semantics:

* conv2d: groups == 1 or 1 < groups < C -> CONV_2D (grouped filters), groups == C ->
  DEPTHWISE_CONV_2D (depth multiplier O / C); padding that is neither VALID nor
  TFLite's SAME becomes a PAD (with the input zero point) before a VALID conv.
* avg_pool2d / max_pool2d -> AVERAGE_POOL_2D / MAX_POOL_2D; avg with count_include_pad
  and padding -> PAD (zero point) + VALID pool; max with other padding -> PAD (-128) + VALID.
* fully_connected, add, mul, softmax, reshape, transpose, pad (PAD/PADV2), mean, quantize
  -> FULLY_CONNECTED, ADD, MUL, SOFTMAX, RESHAPE, TRANSPOSE, PAD/PADV2, MEAN, QUANTIZE.
* concat -> CONCATENATION, with a QUANTIZE before each input quantized differently from
  the output (TFLM's int8 concatenation requires equal quantization).
* table ops (clamp, leaky_relu, sigmoid, tanh) -> RELU, RELU6, LEAKY_RELU,
  LOGISTIC, TANH when the node's table equals what TFLM computes for that op.
* fused activations -> the TFLite fused activation whose int8 clamp range is the node's.

A graph input/output recorded as float32 in the source model (``meta["io"]``) gets
its QUANTIZE / DEQUANTIZE back. Anything TFLite cannot express is an error
naming the node.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import GraphError, UnsupportedOpError
from ..frontends.tflite import same_pads, schema
from ..ir.graph import Graph, QuantParams
from ..ops import get_op
from ..ops.base import quantized_activation_range
from ..quant import tflm_tables

TYPES = {"int8": "INT8", "int32": "INT32", "float32": "FLOAT32", "int16": "INT16"}


class _Writer:
    def __init__(self, graph: Graph) -> None:
        self.g = graph
        self.fb = schema()
        self.buffers = [self.fb.BufferT()]
        self.tensors: list = []
        self.index: dict[str, int] = {}
        self.operators: list = []
        self.codes: list = []
        self.code_index: dict[int, int] = {}

    # -- tensors --------------------------------------------------------------------
    def _quant(self, q: QuantParams | None, axis: int | None = None):
        if q is None:
            return None
        qp = self.fb.QuantizationParametersT()
        qp.scale = [float(s) for s in q.scale]
        qp.zeroPoint = [int(z) for z in q.zero_point]
        qp.quantizedDimension = int(q.axis if axis is None else axis) if q.per_channel or axis is not None else 0
        return qp

    def tensor(self, name: str, shape, dtype: str, quant: QuantParams | None = None, data: np.ndarray | None = None,
               axis: int | None = None) -> int:
        t = self.fb.TensorT()
        t.name = name
        t.shape = np.asarray(shape, np.int32)
        t.type = getattr(self.fb.TensorType, TYPES[dtype])
        if data is not None:
            arr = np.ascontiguousarray(np.asarray(data).astype({"int8": np.int8, "int32": np.int32,
                                                                   "float32": np.float32, "int16": np.int16}[dtype]))
            b = self.fb.BufferT()
            b.data = np.frombuffer(arr.tobytes(), np.uint8)
            self.buffers.append(b)
            t.buffer = len(self.buffers) - 1
        else:
            t.buffer = 0
        t.quantization = self._quant(quant, axis)
        self.tensors.append(t)
        return len(self.tensors) - 1

    def ir(self, name: str) -> int:
        """The tflite tensor of IR tensor `name` (constants are written on first use)."""
        if name not in self.index:
            t = self.g.tensors[name]
            self.index[name] = self.tensor(name, t.shape, t.dtype, t.quant, t.data)
        return self.index[name]

    def int32_const(self, name: str, values) -> int:
        v = np.asarray(values, np.int32)
        return self.tensor(self.unique(name), v.shape, "int32", None, v)

    def unique(self, base: str) -> str:
        names = {t.name for t in self.tensors}
        name, i = base, 1
        while name in names:
            name, i = f"{base}_{i}", i + 1
        return name

    def temp(self, base: str, shape, quant: QuantParams) -> int:
        return self.tensor(self.unique(base), shape, "int8", quant)

    # -- operators ------------------------------------------------------------------
    def op(self, code_name: str, inputs: list[int], outputs: list[int], options=None, options_type: str | None = None):
        code = getattr(self.fb.BuiltinOperator, code_name)
        if code not in self.code_index:
            oc = self.fb.OperatorCodeT()
            oc.builtinCode = code
            oc.deprecatedBuiltinCode = min(code, 127)
            oc.version = 1
            self.codes.append(oc)
            self.code_index[code] = len(self.codes) - 1
        o = self.fb.OperatorT()
        o.opcodeIndex = self.code_index[code]
        o.inputs = np.asarray(inputs, np.int32)
        o.outputs = np.asarray(outputs, np.int32)
        if options is not None:
            o.builtinOptionsType = getattr(self.fb.BuiltinOptions, options_type)
            o.builtinOptions = options
        self.operators.append(o)

    def options(self, cls: str, **fields):
        obj = getattr(self.fb, cls + "T")()
        for k, v in fields.items():
            setattr(obj, k, v)
        return obj

    def fused(self, node) -> int:
        """The TFLite fused activation whose int8 range equals the node's."""
        q = self.g.tensors[node.outputs[0]].quant
        want = quantized_activation_range(node, q)
        fa = self.fb.ActivationFunctionType
        for code, (lo, hi) in ((fa.NONE, (None, None)), (fa.RELU, (0.0, None)), (fa.RELU6, (0.0, 6.0)),
                               (fa.RELU_N1_TO_1, (-1.0, 1.0))):
            probe = type(node)(node.name, node.op, [], [], {"act_min": lo, "act_max": hi})
            if quantized_activation_range(probe, q) == want:
                return code
        raise UnsupportedOpError(f"node '{node.name}' ({node.op}): fused activation range "
                                 f"[{node.attrs.get('act_min')}, {node.attrs.get('act_max')}] has no TFLite "
                                 "equivalent (NONE, RELU, RELU6, RELU_N1_TO_1)")

    def pad_before(self, node, x: int, pads, value: int) -> int:
        """A PAD/PADV2 of NHWC tensor x by [top, bottom, left, right] with raw int8 `value`."""
        xt = self.tensors[x]
        shape = [int(d) for d in xt.shape]
        pt, pb, pl, pr = pads
        out_shape = [shape[0], shape[1] + pt + pb, shape[2] + pl + pr, shape[3]]
        q = self.g.tensors[node.inputs[0]].quant
        y = self.temp(f"{node.name}_padded", out_shape, q)
        paddings = self.int32_const(f"{node.name}_paddings", [[0, 0], [pt, pb], [pl, pr], [0, 0]])
        if value == q.zp:
            self.op("PAD", [x, paddings], [y], self.options("PadOptions"), "PadOptions")
        else:
            c = self.tensor(self.unique(f"{node.name}_pad_value"), [1], "int8", q, np.array([value], np.int8))
            self.op("PADV2", [x, paddings, c], [y], self.options("PadV2Options"), "PadV2Options")
        return y

    def padding(self, node, x_shape, k, stride, dil, pads) -> str | None:
        """'VALID' or 'SAME' when the IR pads are exactly TFLite's, else None."""
        if not any(pads):
            return "VALID"
        same = same_pads(x_shape[1], k[0], stride[0], dil[0]) + same_pads(x_shape[2], k[1], stride[1], dil[1])
        if list(same) == list(pads):
            return "SAME"
        return None

    # -- IR ops ---------------------------------------------------------------------
    def node(self, node) -> None:
        fn = getattr(self, "op_" + node.op, None)
        if fn is None:
            raise UnsupportedOpError(f"node '{node.name}' ({node.op}) has no TFLite equivalent that TFLM runs")
        fn(node)

    def op_conv2d(self, node):
        g = self.g
        xt, wt = g.tensors[node.inputs[0]], g.tensors[node.inputs[1]]
        a = node.attrs
        o, kh, kw, cg = wt.shape
        c = xt.shape[3]
        groups = int(a["groups"])
        x = self.ir(node.inputs[0])
        mode = self.padding(node, xt.shape, (kh, kw), a["stride"], a["dilation"], a["pads"])
        if mode is None:
            x = self.pad_before(node, x, a["pads"], xt.quant.zp)
            mode = "VALID"
        padding = getattr(self.fb.Padding, mode)
        bias = self._bias(node)
        y = self.ir(node.outputs[0])
        fa = self.fused(node)
        if groups == c and c > 1:
            w = wt.data.transpose(3, 1, 2, 0)  # [1, KH, KW, O]
            wq = wt.quant
            wi = self.tensor(self.unique(node.inputs[1]), w.shape, "int8", wq, w, axis=3 if wq.per_channel else 0)
            opts = self.options("DepthwiseConv2DOptions", padding=padding, strideH=int(a["stride"][0]),
                                strideW=int(a["stride"][1]), depthMultiplier=o // c, fusedActivationFunction=fa,
                                dilationHFactor=int(a["dilation"][0]), dilationWFactor=int(a["dilation"][1]))
            self.op("DEPTHWISE_CONV_2D", [x, wi, bias], [y], opts, "DepthwiseConv2DOptions")
            return
        wi = self.tensor(self.unique(node.inputs[1]), wt.shape, "int8", wt.quant, wt.data, axis=0)
        opts = self.options("Conv2DOptions", padding=padding, strideH=int(a["stride"][0]), strideW=int(a["stride"][1]),
                            fusedActivationFunction=fa, dilationHFactor=int(a["dilation"][0]),
                            dilationWFactor=int(a["dilation"][1]))
        self.op("CONV_2D", [x, wi, bias], [y], opts, "Conv2DOptions")

    def _bias(self, node) -> int:
        if len(node.inputs) > 2 and node.inputs[2]:
            bt = self.g.tensors[node.inputs[2]]
            q = bt.quant
            if q is None:
                sx = np.float64(self.g.tensors[node.inputs[0]].quant.s)
                sw = self.g.tensors[node.inputs[1]].quant.scale.astype(np.float64)
                scale = np.broadcast_to(sx * sw, bt.shape).astype(np.float32)
                q = QuantParams(scale, np.zeros(bt.shape, np.int64), 0)
            return self.tensor(self.unique(node.inputs[2]), bt.shape, "int32", q, bt.data, axis=0)
        # No bias: write zeros (TFLM's depthwise kernel crashes on a missing optional bias).
        o = self.g.tensors[node.inputs[1]].shape[0]
        sx = np.float64(self.g.tensors[node.inputs[0]].quant.s)
        sw = np.broadcast_to(self.g.tensors[node.inputs[1]].quant.scale.astype(np.float64), (o,))
        q = QuantParams((sx * sw).astype(np.float32), np.zeros(o, np.int64), 0)
        return self.tensor(self.unique(f"{node.name}_zero_bias"), (o,), "int32", q, np.zeros(o, np.int32), axis=0)

    def op_fully_connected(self, node):
        xt = self.g.tensors[node.inputs[0]]
        wt = self.g.tensors[node.inputs[1]]
        x = self.ir(node.inputs[0])
        wi = self.tensor(self.unique(node.inputs[1]), wt.shape, "int8", wt.quant, wt.data, axis=0)
        bias = self._bias(node)
        y = self.ir(node.outputs[0])
        opts = self.options("FullyConnectedOptions", fusedActivationFunction=self.fused(node),
                            keepNumDims=len(xt.shape) > 2)
        self.op("FULLY_CONNECTED", [x, wi, bias], [y], opts, "FullyConnectedOptions")

    def _pool(self, node, code):
        xt = self.g.tensors[node.inputs[0]]
        a = node.attrs
        kh, kw = a["kernel"]
        x = self.ir(node.inputs[0])
        mode = self.padding(node, xt.shape, (kh, kw), a["stride"], (1, 1), a["pads"])
        if node.op == "avg_pool2d" and a.get("count_include_pad") and any(a["pads"]):
            x, mode = self.pad_before(node, x, a["pads"], xt.quant.zp), "VALID"
        elif mode is None and node.op == "max_pool2d":
            x, mode = self.pad_before(node, x, a["pads"], -128), "VALID"
        elif mode is None:
            raise UnsupportedOpError(f"node '{node.name}' (avg_pool2d): padding {a['pads']} that leaves padded "
                                     "positions out of the count is only expressible as TFLite SAME padding")
        opts = self.options("Pool2DOptions", padding=getattr(self.fb.Padding, mode), strideH=int(a["stride"][0]),
                            strideW=int(a["stride"][1]), filterHeight=int(kh), filterWidth=int(kw),
                            fusedActivationFunction=self.fused(node))
        self.op(code, [x], [self.ir(node.outputs[0])], opts, "Pool2DOptions")

    def op_avg_pool2d(self, node):
        self._pool(node, "AVERAGE_POOL_2D")

    def op_max_pool2d(self, node):
        self._pool(node, "MAX_POOL_2D")

    def op_add(self, node):
        sa, sb = (float(self.g.tensors[t].quant.s) for t in node.inputs)
        sy = float(self.g.tensors[node.outputs[0]].quant.s)
        if 2 * max(sa, sb) / ((1 << 20) * sy) >= 1.0:
            raise UnsupportedOpError(f"node '{node.name}' (add): output scale {sy:.3g} is below 2^-19 times the "
                                     f"input scales ({sa:.3g}, {sb:.3g}); TFLM's int8 ADD cannot represent that "
                                     "rescaling (it aborts)")
        ins = [self.ir(t) for t in node.inputs]
        self.op("ADD", ins, [self.ir(node.outputs[0])],
                self.options("AddOptions", fusedActivationFunction=self.fused(node)), "AddOptions")

    def op_mul(self, node):
        ins = [self.ir(t) for t in node.inputs]
        self.op("MUL", ins, [self.ir(node.outputs[0])],
                self.options("MulOptions", fusedActivationFunction=self.fused(node)), "MulOptions")

    def op_softmax(self, node):
        self.op("SOFTMAX", [self.ir(node.inputs[0])], [self.ir(node.outputs[0])],
                self.options("SoftmaxOptions", beta=float(node.attrs.get("beta", 1.0))), "SoftmaxOptions")

    def op_reshape(self, node):
        shape = [int(d) for d in node.attrs["shape"]]
        s = self.int32_const(f"{node.name}_shape", shape)
        self.op("RESHAPE", [self.ir(node.inputs[0]), s], [self.ir(node.outputs[0])],
                self.options("ReshapeOptions", newShape=shape), "ReshapeOptions")

    def op_transpose(self, node):
        p = self.int32_const(f"{node.name}_perm", [int(v) for v in node.attrs["perm"]])
        self.op("TRANSPOSE", [self.ir(node.inputs[0]), p], [self.ir(node.outputs[0])],
                self.options("TransposeOptions"), "TransposeOptions")

    def op_concat(self, node):
        yq = self.g.tensors[node.outputs[0]].quant
        ins = []
        for t in node.inputs:
            x = self.ir(t)
            tq = self.g.tensors[t].quant
            if not tq.same_as(yq):
                r = self.temp(f"{node.name}_{t}_requant", self.g.tensors[t].shape, yq)
                self.op("QUANTIZE", [x], [r], self.options("QuantizeOptions"), "QuantizeOptions")
                x = r
            ins.append(x)
        self.op("CONCATENATION", ins, [self.ir(node.outputs[0])],
                self.options("ConcatenationOptions", axis=int(node.attrs["axis"]), fusedActivationFunction=0),
                "ConcatenationOptions")

    def op_pad(self, node):
        xt = self.g.tensors[node.inputs[0]]
        pads = [int(p) for p in node.attrs["pads"]]
        paddings = self.int32_const(f"{node.name}_paddings", np.array(pads).reshape(len(xt.shape), 2))
        value = get_op("pad").pad_value(node, self.g)
        x, y = self.ir(node.inputs[0]), self.ir(node.outputs[0])
        if value == xt.quant.zp:
            self.op("PAD", [x, paddings], [y], self.options("PadOptions"), "PadOptions")
        else:
            c = self.tensor(self.unique(f"{node.name}_value"), [1], "int8", xt.quant, np.array([value], np.int8))
            self.op("PADV2", [x, paddings, c], [y], self.options("PadV2Options"), "PadV2Options")

    def op_mean(self, node):
        axes = self.int32_const(f"{node.name}_axes", [int(a) for a in node.attrs["axes"]])
        self.op("MEAN", [self.ir(node.inputs[0]), axes], [self.ir(node.outputs[0])],
                self.options("ReducerOptions", keepDims=bool(node.attrs.get("keepdims", False))), "ReducerOptions")

    def op_quantize(self, node):
        self.op("QUANTIZE", [self.ir(node.inputs[0])], [self.ir(node.outputs[0])],
                self.options("QuantizeOptions"), "QuantizeOptions")

    def _table_op(self, node, candidates):
        table = get_op(node.op).table(node, self.g)
        qx = self.g.tensors[node.inputs[0]].quant
        qy = self.g.tensors[node.outputs[0]].quant
        for code, make, opts in candidates:
            try:
                ref = make(qx, qy)
            except GraphError:
                continue
            if np.array_equal(ref, table):
                self.op(code, [self.ir(node.inputs[0])], [self.ir(node.outputs[0])], *opts)
                return
        names = ", ".join(c for c, _, _ in candidates)
        raise UnsupportedOpError(f"node '{node.name}' ({node.op}): its int8 table differs from what TFLM computes "
                                 f"for {names} with these quantization parameters, so no TFLite op reproduces it "
                                 "(import the model with table_method 'tflm' semantics, or keep input and output "
                                 "quantization equal for clamps)")

    def op_sigmoid(self, node):
        self._table_op(node, [("LOGISTIC", lambda qx, qy: tflm_tables.logistic_table(qx.s, qx.zp), ())])

    def op_tanh(self, node):
        self._table_op(node, [("TANH", lambda qx, qy: tflm_tables.tanh_table(qx.s, qx.zp), ())])

    def op_leaky_relu(self, node):
        alpha = float(node.attrs.get("alpha", 0.01))
        self._table_op(node, [("LEAKY_RELU", lambda qx, qy: tflm_tables.leaky_relu_table(qx.s, qx.zp, qy.s, qy.zp,
                                                                                         alpha),
                               (self.options("LeakyReluOptions", alpha=alpha), "LeakyReluOptions"))])

    def op_clamp(self, node):
        self._table_op(node, [
            ("RELU", lambda qx, qy: tflm_tables.relu_table(qx.s, qx.zp, qy.s, qy.zp), ()),
            ("RELU6", lambda qx, qy: tflm_tables.relu6_table(qx.s, qx.zp), ()),
        ])  # RELU_N1_TO_1 exists in TFLite but TFLM registers no kernel for it

    # -- model ----------------------------------------------------------------------
    def build(self) -> bytes:
        g = self.g
        io = g.meta.get("io", {}) or {}
        inputs, outputs = [], []
        for name in g.inputs:
            t = g.tensors[name]
            i = self.ir(name)
            if io.get(name, {}).get("source_dtype") == "float32":
                f = self.tensor(self.unique(f"{name}_float"), t.shape, "float32")
                self.tensors[i].name = self.unique(f"{name}_int8")
                self.op("QUANTIZE", [f], [i], self.options("QuantizeOptions"), "QuantizeOptions")
                inputs.append(f)
            else:
                inputs.append(i)
        for node in g.nodes:
            self.node(node)
        for name in g.outputs:
            i = self.ir(name)
            if io.get(name, {}).get("source_dtype") == "float32":
                f = self.tensor(self.unique(f"{name}_float"), g.tensors[name].shape, "float32")
                self.op("DEQUANTIZE", [i], [f], self.options("DequantizeOptions"), "DequantizeOptions")
                outputs.append(f)
            else:
                outputs.append(i)
        sg = self.fb.SubGraphT()
        sg.tensors, sg.operators = self.tensors, self.operators
        sg.inputs, sg.outputs = np.asarray(inputs, np.int32), np.asarray(outputs, np.int32)
        sg.name = "main"
        m = self.fb.ModelT()
        m.version = 3
        m.operatorCodes = self.codes
        m.subgraphs = [sg]
        m.buffers = self.buffers
        m.description = f"mcuforge {__version__}: {g.name}"
        import flatbuffers

        builder = flatbuffers.Builder(1024)
        builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())


def to_tflite_bytes(graph: Graph) -> bytes:
    """The graph as a .tflite flatbuffer (int8, TFLM-compatible)."""
    if not graph.is_quantized:
        raise GraphError(f"graph '{graph.name}' is not quantized: quantize it (deploy with --calib) before "
                         "exporting to TFLite")
    graph.validate()
    for name in graph.inputs + graph.outputs:
        if graph.tensors[name].dtype != "int8":
            raise GraphError(f"graph input/output '{name}' must be int8 to export, is {graph.tensors[name].dtype}")
    return _Writer(graph).build()


def export_tflite(graph: Graph, path: str | Path) -> int:
    """Write the graph as a .tflite file; returns its size in bytes."""
    data = to_tflite_bytes(graph)
    Path(path).write_bytes(data)
    return len(data)


__all__ = ["export_tflite", "to_tflite_bytes"]
