"""The op registry. Each op module defines one op family; see base.OpDef."""

from __future__ import annotations

from ..errors import UnsupportedOpError
from .base import OpDef
from .binary import Add, Mul
from .conv import Conv2D
from .dense import FullyConnected
from .layout import Concat, Reshape, Transpose
from .pad import Pad
from .pool import AvgPool2D, MaxPool2D
from .quantize import Quantize
from .reduce import Mean
from .softmax import Softmax
from .unary import Abs, Clamp, LeakyRelu, LogAbs, QuantizeLevels, Sigmoid, Tanh

OPS: dict[str, OpDef] = {
    op.name: op
    for op in (Conv2D(), FullyConnected(), AvgPool2D(), MaxPool2D(), Add(), Mul(), Clamp(), LeakyRelu(),
               Sigmoid(), Tanh(), Abs(), LogAbs(), QuantizeLevels(), Softmax(), Reshape(), Transpose(), Concat(),
               Pad(), Mean(), Quantize())
}


def get_op(name: str, node=None) -> OpDef:
    try:
        return OPS[name]
    except KeyError:
        where = f"node '{node.name}': " if node is not None else ""
        raise UnsupportedOpError(f"{where}op '{name}' is not supported by mcuforge "
                                 f"(supported: {', '.join(sorted(OPS))})") from None


__all__ = ["OPS", "OpDef", "get_op"]
