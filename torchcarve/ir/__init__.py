"""The IR: types, values, nodes, graphs, params, the op registry, the text form and the verifier."""
from .graph import Graph
from .node import Node
from .params import ParamStore
from .parser import parse
from .types import TensorType
from .value import Value
from .verifier import verify

__all__ = ["Graph", "Node", "ParamStore", "TensorType", "Value", "parse", "verify"]
