"""The mcuforge intermediate representation: a typed graph of tensors and nodes."""

from .graph import Graph, Node, QuantParams, Tensor
from .serialize import load_graph, save_graph

__all__ = ["Graph", "Node", "QuantParams", "Tensor", "load_graph", "save_graph"]
