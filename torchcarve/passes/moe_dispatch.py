"""MoE dispatch: choose, per carve.moe layer, the dense form (every expert on every token, static shapes) or
the sparse form (each expert on the tokens routed to it: NonZero/Gather/ScatterND in ONNX, where/index_add in
PyTorch). Both compute the same outputs; `auto` applies the rule measured in onnxruntime
(`moe_dispatch`, benchmarks/moe_dispatch.py) to the layer's token count.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from ..errors import CarveError
from ..ir import Graph
from ..ir.node import Node
from ..ir.ops.moe import moe_saved_macs
from ..opset.moe import auto_dispatch, moe_sizes, static_tokens
from .base import Pass, PassContext, PassResult, register_pass


@register_pass("moe-dispatch")
@dataclass(frozen=True)
class MoeDispatch(Pass):
    """Set each MoE layer's dispatch form: dense (all experts, batched MatMuls) or sparse (routed tokens only).

    form: auto (the measured rule: see docs/moe.md) | dense | sparse. tokens: the token count (batch x seq)
    `auto` assumes for a layer whose count is symbolic.
    """

    exact: ClassVar[bool] = True
    form: Literal["auto", "dense", "sparse"] = "auto"
    tokens: int = 64

    def __post_init__(self) -> None:
        if self.tokens < 1:
            raise CarveError(f"{self.spec()}: tokens must be at least 1, got {self.tokens}")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        rows, changed = [], False
        for node in [n for n in graph.nodes if n.op == "carve.moe"]:
            form = self._form(node)
            changed |= node.attrs.get("dispatch", "auto") != form
            rows.append(self._row(node, form))
            node.attrs["dispatch"] = form
        forms = [row["form"] for row in rows]
        return PassResult(changed, {"moe_layers": len(rows), "dense": forms.count("dense"),
                                    "sparse": forms.count("sparse"), "layers": rows})

    def _form(self, node: Node) -> str:
        if self.form != "auto":
            return self.form
        return auto_dispatch(node, self._tokens(node))

    def _tokens(self, node: Node) -> int:
        tokens = static_tokens(node)
        return self.tokens if tokens is None else tokens

    def _row(self, node: Node, form: str) -> dict[str, Any]:
        """The layer, its size, the token count the choice assumed, the MACs per expert sparse saves, the form
        and why."""
        experts, top_k, expert_macs = moe_sizes(node)
        tokens = static_tokens(node)
        saved = moe_saved_macs(self._tokens(node), experts, top_k, expert_macs)
        return {"layer": node.scope or node.output.name, "experts": experts, "top-k": top_k,
                "tokens": tokens if tokens is not None else f"{self.tokens} (assumed)",
                "saved MACs/expert": f"{saved:,}", "form": form, "why": "forced" if self.form != "auto" else "rule"}
