"""Elementwise ops: activations, arithmetic and comparisons (with their real overloads), aliases and
dtype conversions. Broadcasting ops prune through the `elementwise` rule."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..ir.node import Node
from . import lowerings as lower
from . import prune_rules as prune
from .decl import OpDecl, table
from .lowerings import BASE, forms
from .quant import MICROSOFT

if TYPE_CHECKING:
    from ..backends.onnx import LoweringContext

# aten unary op -> ONNX op; the UNPRUNED ones have no pruning rule (barriers)
UNARY = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "erf": "Erf", "exp": "Exp",
         "log": "Log", "sqrt": "Sqrt", "neg": "Neg", "abs": "Abs", "reciprocal": "Reciprocal", "sin": "Sin",
         "cos": "Cos", "floor": "Floor", "ceil": "Ceil", "logical_not": "Not", "bitwise_not": "Not", "sign": "Sign",
         "round": "Round"}
UNARY_UNPRUNED = {"ceil", "logical_not", "bitwise_not", "sign", "round"}
# aten binary op (overloads .Tensor and .Scalar) -> ONNX op; the UNPRUNED ones have no pruning rule
BINARY = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "bitwise_and": "And", "bitwise_or": "Or",
          "__and__": "And", "__or__": "Or"}
BINARY_UNPRUNED: set[str] = set()
COMPARE = {"eq": "Equal", "lt": "Less", "le": "LessOrEqual", "gt": "Greater", "ge": "GreaterOrEqual"}
OVERLOADS = ("Tensor", "Scalar")
# aliases and dtype conversions: no ONNX node, or a Cast
IDENTITY = ("contiguous", "clone", "alias", "detach", "lift_fresh_copy", "dropout", "_to_copy", "to.dtype",
            "to.dtype_layout")
VIEWS = {"alias", "detach"}
NO_ONNX_FORM = "no ONNX lowering written yet"


def bias_gelu(ctx: "LoweringContext", node: Node) -> None:
    """com.microsoft FastGelu (tanh approximation, optional bias), BiasGelu (erf, a bias) or Gelu (erf)."""
    tanh = node.attrs.get("approximate", "none") == "tanh"
    op_type = "FastGelu" if tanh else ("BiasGelu" if len(node.inputs) == 2 else "Gelu")
    ctx.extra_domains[MICROSOFT] = 1
    ctx.emit(op_type, [ctx.name(v) for v in node.inputs], ctx.output_names(node), domain=MICROSOFT)


def _ew(name: str, rule=prune.elementwise, **fields) -> OpDecl:
    """An aten op with the broadcasting `elementwise` pruning rule unless another `rule` (or None) is given."""
    return OpDecl(f"aten.{name}", prune=rule, **fields)


ELEMENTWISE = table(
    *(_ew(op, None if op in UNARY_UNPRUNED else prune.elementwise, lower=lower.unary(onnx_op))
      for op, onnx_op in UNARY.items()),
    *(_ew(f"{op}.{o}", None if op in BINARY_UNPRUNED else prune.elementwise, lower=lower.binary(onnx_op))
      for op, onnx_op in BINARY.items() for o in OVERLOADS),
    *(_ew(f"{op}.{o}", lower=lower.binary(onnx_op, compare=True)) for op, onnx_op in COMPARE.items() for o in OVERLOADS),
    *(_ew(f"ne.{o}", lower=lower.negated(lower.binary("Equal", compare=True))) for o in OVERLOADS),
    *(_ew(op, lower=lower.identity, view=op in VIEWS) for op in IDENTITY),
    _ew("lift_fresh", None, lower=lower.identity),
    _ew("type_as", prune.first_input, lower=lower.identity),
    _ew("logical_and", lower=lower.binary("And")), _ew("logical_or", lower=lower.binary("Or")),
    _ew("nan_to_num", no_lowering=NO_ONNX_FORM),
    _ew("minimum", None, lower=lower.binary("Min")), _ew("maximum", None, lower=lower.binary("Max")),
    _ew("min.other", None, lower=lower.binary("Min")), _ew("max.other", None, lower=lower.binary("Max")),
    _ew("pow.Tensor_Scalar", lower=lower.binary("Pow", second="exponent")),
    _ew("pow.Tensor_Tensor", lower=lower.binary("Pow", second="exponent")),
    _ew("pow.Scalar", no_lowering=NO_ONNX_FORM),
    _ew("rsub.Scalar", lower=lower.rsub), _ew("rsub.Tensor", lower=lower.rsub),
    _ew("floor_divide.Scalar", no_lowering=NO_ONNX_FORM),
    _ew("remainder.Scalar", no_lowering=NO_ONNX_FORM), _ew("remainder.Tensor", no_lowering=NO_ONNX_FORM),
    _ew("where.self", lower=lower.where), _ew("where.ScalarOther", lower=lower.where),
    _ew("where.ScalarSelf", lower=lower.where), _ew("where.Scalar", lower=lower.where),
    _ew("masked_fill.Scalar", lower=lower.masked_fill), _ew("masked_fill.Tensor", no_lowering=NO_ONNX_FORM),
    _ew("clamp", lower=lower.clamp), _ew("clamp_min", lower=lower.clamp), _ew("clamp_max", lower=lower.clamp),
    _ew("hardtanh", lower=lower.hardtanh),
    _ew("gelu", lower=forms((BASE, lower.gelu), (20, lower.gelu_op))),
    _ew("silu", lower=lower.silu), _ew("rsqrt", lower=lower.rsqrt),
    _ew("hardsigmoid", lower=lower.unary("HardSigmoid", alpha=1 / 6, beta=0.5)),
    _ew("leaky_relu", lower=lower.with_attrs("LeakyRelu", alpha="negative_slope")),
    _ew("elu", lower=lower.with_attrs("Elu", alpha="alpha")),
    _ew("softplus", lower=lower.unary("Softplus")),
    _ew("mish", lower=forms((BASE, lower.mish), (18, lower.unary("Mish")))),
    _ew("hardswish", lower=forms((BASE, lower.hardswish), (14, lower.unary("HardSwish")))),
    OpDecl("carve.bias_gelu", lower=bias_gelu),
)
