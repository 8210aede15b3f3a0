"""aten-level torch.fx graph -> IR. Shared by the export and fx frontends (one converter)."""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.fx

from ..errors import CaptureError, CarveError
from ..ir import Graph, TensorType, verify
from ..ir.infer import InferenceUnavailable, infer_types
from ..ir.names import first_free
from ..ir.ops import get_op, op_name
from ..ir.types import Dim, dtype_name, normalize_dim, size_attr
from .moe import moe_node_parts, moe_op

# overloads that require a device argument -> the device-free overload doing the same math
# (the IR never pins a device: generated code follows its inputs)
DEVICE_FREE_FORMS = {"aten::to.device": torch.ops.aten.to.dtype, "aten::to.dtype_layout": torch.ops.aten._to_copy.default}


@dataclass(frozen=True)
class ParamSource:
    """A placeholder that reads a weight: its ParamStore name, tensor and whether it trains."""

    name: str
    tensor: torch.Tensor
    trainable: bool


class TensorOutputs(torch.nn.Module):
    """Wraps a model so it returns the tensor leaves of its output (HF ModelOutput, caches, ...).

    Graph outputs are those leaves in pytree order; non-tensor leaves (a DynamicCache) are dropped.
    Weight and scope names under the wrapper start with PREFIX; `unwrapped_name` strips it.
    """

    PREFIX = "model."

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

        self.output_names = OutputNames()  # not a list: torch.export restores list attributes after tracing

    def forward(self, *inputs: Any) -> tuple:
        named = named_tensor_leaves(self.model(*inputs))
        self.output_names.names = list(named)
        return tuple(named.values())


class OutputNames:
    """Where TensorOutputs records the names of the leaves it returned (read after capture)."""

    def __init__(self) -> None:
        self.names: list[str] = []


def named_tensor_leaves(output: Any) -> dict[str, torch.Tensor]:
    """The tensors of a model's output by name, in pytree order: dict and ModelOutput keys
    (`logits`), `output_0`, `output_1`... for a tuple, `output` for a single tensor."""
    named: dict[str, torch.Tensor] = {}
    for path, leaf in torch.utils._pytree.tree_flatten_with_path(output)[0]:
        if isinstance(leaf, torch.Tensor):
            named[first_free(_path_name(path), named)] = leaf
    return named


def _distinct_from_inputs(output_names: Sequence[str], input_names: list[str]) -> list[str]:
    """Output names, suffixed where one equals an input's name (`forward(self, output)`)."""
    taken = set(input_names) | set(output_names)
    renamed = []
    for name in output_names:
        if name in input_names:
            name = first_free(name, taken)
            taken.add(name)
        renamed.append(name)
    return renamed


def _path_name(path: tuple) -> str:
    parts = [str(getattr(key, "key", getattr(key, "idx", getattr(key, "name", key)))) for key in path]
    if not parts or isinstance(path[0], torch.utils._pytree.SequenceKey):
        parts.insert(0, "output")
    return "_".join(parts)


def unwrapped_name(path: str) -> str:
    """A weight or module path under TensorOutputs, relative to the user's model."""
    if path == TensorOutputs.PREFIX.rstrip("."):
        return ""
    return path.removeprefix(TensorOutputs.PREFIX)


class SymbolNames:
    """torch's symbols (s0, s21, ...) -> the IR's symbol names ("batch", "seq"), from the declared dynamic dims."""

    def __init__(self, declared: Sequence[dict[int, str]]) -> None:
        self.declared = list(declared)
        self.names: dict[Any, str] = {}

    def bind_input(self, index: int, input_name: str, val: torch.Tensor) -> None:
        """Name the symbols of graph input `index`'s declared dims; a declared dim torch fixed is an error."""
        for dim, symbol in sorted((self.declared[index] if index < len(self.declared) else {}).items()):
            size = val.shape[dim]
            expr = getattr(getattr(size, "node", None), "expr", None)
            if expr is None or not expr.is_Symbol:
                raise CaptureError(f"dim {dim} of input '{input_name}' is declared dynamic ('{symbol}') but the model "
                                   f"fixes it to {size}",
                                   hint="drop that dim from dynamic=..., or capture at another example size")
            self.names.setdefault(expr, symbol)

    def dim(self, size: Any, where: str) -> Dim:
        """A torch size (int or SymInt) as an IR dim: an int, or a product of named symbols and an int."""
        if isinstance(size, int) or not hasattr(size, "node"):
            return int(size)
        expr = size.node.expr
        factors = expr.as_ordered_factors() if expr.is_Mul else [expr]
        parts: list[str] = []
        for factor in factors:
            base, power = factor.as_base_exp()
            if factor.is_Integer and int(factor) > 0:
                parts.append(str(int(factor)))
            elif base in self.names and power.is_Integer and int(power) > 0:
                parts.extend([self.names[base]] * int(power))
            else:
                raise CaptureError(f"{where} has the size {expr}, which is not a product of the dynamic dims",
                                   hint="only sizes like batch, seq or batch*12 are supported; make that dim static")
        return normalize_dim("*".join(parts))


def convert(fx_graph: torch.fx.Graph, params: dict[str, ParamSource], name: str,
            input_names: Sequence[str] = (), output_names: Sequence[str] = (),
            dynamic: Sequence[dict[int, str]] = ()) -> Graph:
    """Build an IR graph; placeholders not in `params` become graph inputs, in order, named
    after `input_names` where given (the model's forward arguments); outputs after `output_names`.
    `dynamic` names the symbolic dims of each graph input ({0: "batch"}); sizes computed from them
    become SymSize attrs."""
    aliased_write = writes_through_an_alias(fx_graph)
    if aliased_write is not None:
        raise CaptureError(f"'{aliased_write.name}' ({aliased_write.target}) writes in place into memory another "
                           f"tensor shares (a view); that cannot be captured exactly",
                           hint="capture with method='export', which functionalizes such writes")
    graph = Graph(name)
    env: dict[torch.fx.Node, Any] = {}
    names = iter(input_names)
    symbols = SymbolNames(dynamic)
    for node in fx_graph.nodes:
        try:
            if node.op == "placeholder" and node.name not in params:
                env[node] = _graph_input(graph, node, next(names, node.name), symbols)
                continue
            env[node] = _convert_node(graph, node, env, params, symbols)
        except CarveError:
            raise
        except Exception as e:
            raise CaptureError(f"could not convert fx node '{node.name}' ({node.target}): {e}") from e
    if len(output_names) == len(graph.outputs):
        graph.output_names = _distinct_from_inputs(output_names, graph.signature_names()[0])
    verify(graph)
    return graph


CARVE_CALLS = {moe_op._opoverload: ("carve.moe", moe_node_parts)}  # custom op -> (IR op, its inputs and attrs)


def _convert_node(graph: Graph, node: torch.fx.Node, env: dict, params: dict[str, ParamSource],
                  symbols: SymbolNames) -> Any:
    if node.op == "placeholder":
        return _placeholder(graph, node, params)
    if node.op == "output":
        graph.set_outputs(_outputs(node.args[0], env))
        return None
    if node.op != "call_function":
        raise CaptureError(f"fx node '{node.name}' is a {node.op}; only aten-level graphs are converted")
    if node.target is operator.getitem:
        return env[node.args[0]][node.args[1]]
    if isinstance(node.meta.get("val"), torch.SymInt):  # sym_size and arithmetic on sizes
        return size_attr(symbols.dim(node.meta["val"], f"'{node.name}' ({node.target})"))
    if not isinstance(node.target, torch._ops.OpOverload):
        raise CaptureError(f"fx node '{node.name}' calls {node.target}, which is not a torch op",
                           hint="capture with method='export', which lowers python calls to aten ops")
    if not node.target._schema.returns:
        return None  # runtime assertions (aten._assert_tensor_metadata): nothing to compute
    if node.target in CARVE_CALLS:
        return _carve_call(graph, node, env)
    functional = functional_overload(node.target)
    if functional is None:
        return _call(graph, node, node.target, env, symbols)
    result = _call(graph, node, functional, env, symbols)
    env[node.args[0]] = result  # later readers of the mutated tensor see the new value
    return result


def functional_overload(overload: torch._ops.OpOverload) -> torch._ops.OpOverload | None:
    """`aten.add_.Tensor` -> `aten.add.Tensor`; None for ops that don't mutate their first input."""
    namespace, name = overload._schema.name.split("::")
    if not name.endswith("_") or name.endswith("__") or not overload._schema.arguments[0].alias_info:
        return None
    try:
        packet = getattr(getattr(torch.ops, namespace), name[:-1])
        return getattr(packet, overload._overloadname)
    except (AttributeError, RuntimeError):
        raise CaptureError(f"in-place op {namespace}.{name} has no functional form") from None


def writes_through_an_alias(fx_graph: torch.fx.Graph) -> torch.fx.Node | None:
    """The first in-place op whose target is a view, or has views taken of it (`y[:, 0] = 0`).

    Capture turns in-place ops into their functional form and rebinds the written tensor; that is
    exact only when no other tensor shares its memory. Graphs with such writes are functionalized
    first (torch.export's run_decompositions) or rejected.
    """
    for node in fx_graph.nodes:
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            continue
        if functional_overload(node.target) is None or not isinstance(node.args[0], torch.fx.Node):
            continue
        written = node.args[0]
        if _is_view(written) or any(_is_view(user) for user in written.users if user is not node):
            return node
    return None


def _is_view(node: torch.fx.Node) -> bool:
    if not isinstance(node.target, torch._ops.OpOverload):
        return node.target is operator.getitem and _is_view(node.args[0])
    return any(r.alias_info is not None and not r.alias_info.is_write for r in node.target._schema.returns)


def _placeholder(graph: Graph, node: torch.fx.Node, params: dict[str, ParamSource]) -> Any:
    source = params[node.name]
    if not node.users:
        return None
    return graph.add_param(source.name, source.tensor, trainable=source.trainable)


def _graph_input(graph: Graph, node: torch.fx.Node, name: str, symbols: SymbolNames) -> Any:
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        raise CaptureError(f"model input '{name}' is a {type(val).__name__}; only tensor inputs are supported")
    symbols.bind_input(len(graph.inputs), name, val)
    return graph.add_input(name, _type_of_fake(val, symbols, f"input '{name}'"))


def _type_of_fake(val: torch.Tensor, symbols: SymbolNames, where: str) -> TensorType:
    return TensorType(tuple(symbols.dim(d, where) for d in val.shape), dtype_name(val.dtype))


def _outputs(result: Any, env: dict) -> list:
    flat, _ = torch.utils._pytree.tree_flatten(result)
    values = [env[item] for item in flat if isinstance(item, torch.fx.Node)]
    return [v for v in values if hasattr(v, "producer")]


def _call(graph: Graph, node: torch.fx.Node, overload: torch._ops.OpOverload, env: dict,
          symbols: SymbolNames) -> Any:
    args = torch.fx.node.map_arg(node.args, lambda n: env[n])
    kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: env[n])
    if overload.name() in DEVICE_FREE_FORMS:
        overload, args, kwargs = _device_free(overload, args, kwargs)
    name = op_name(overload)
    opdef = get_op(name)
    signature = opdef.extra["signature"]
    inputs, attrs = signature.encode(args, kwargs, is_tensor=lambda v: hasattr(v, "producer"))
    try:
        types = infer_types(opdef, attrs, [v.type for v in inputs])
    except InferenceUnavailable:
        types = [_type_of_fake(v, symbols, f"'{node.name}'") for v in _flat_vals(node.meta.get("val"))]
    ir_node = graph.add_node(name, inputs, attrs, output_types=types, names=[node.name] if len(types) == 1 else (),
                             scope=_scope(node))
    return ir_node.outputs[0] if _single_result(overload) else list(ir_node.outputs)


def _carve_call(graph: Graph, node: torch.fx.Node, env: dict) -> Any:
    """A torchcarve custom op (put there by a capture-time swap, e.g. frontends/moe.py) as its carve.* node."""
    name, parts = CARVE_CALLS[node.target]
    inputs, attrs = parts(*torch.fx.node.map_arg((node.args, node.kwargs), lambda n: env[n]))
    types = infer_types(get_op(name), attrs, [v.type for v in inputs])
    return graph.add_node(name, inputs, attrs, output_types=types, names=[node.name], scope=_scope(node)).output


def _device_free(overload: torch._ops.OpOverload, args: tuple, kwargs: dict) -> tuple[Any, tuple, dict]:
    """Re-express a device-taking call with its device-free twin, passing arguments by name."""
    target = DEVICE_FREE_FORMS[overload.name()]
    named = {arg.name: value for arg, value in zip(overload._schema.arguments, args)} | dict(kwargs)
    accepted = {arg.name for arg in target._schema.arguments}
    return target, (), {k: v for k, v in named.items() if k in accepted}


def _single_result(overload: torch._ops.OpOverload) -> bool:
    returns = overload._schema.returns
    return len(returns) == 1 and str(returns[0].type) == "Tensor"


def _flat_vals(val: Any) -> list:
    items = val if isinstance(val, (list, tuple)) else [val]
    return [v for v in items if isinstance(v, torch.Tensor)]


def _scope(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return unwrapped_name(path) if isinstance(path, str) else ""
