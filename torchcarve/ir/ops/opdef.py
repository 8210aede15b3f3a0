"""OpDef: what the compiler's IR layer knows about one op (kernel, argument binding, shapes)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:
    from ..types import TensorType

Args = tuple[list[Any], dict[str, Any]]


@dataclass(frozen=True)
class OpDef:
    """What the compiler knows about one op.

    fn:      the torch callable the PyTorch backend calls (an OpOverload or a plain function
             whose source is self-contained, so generated code can carry it).
    bind:    (inputs, attrs) -> (args, kwargs) for `fn`, with Values standing in for tensors.
    attrs:   valid attribute names (None: not checked).
    infer:   (attrs, input types) -> output types; None means "run fn on meta tensors".
    """

    name: str
    fn: Callable[..., Any]
    bind: Callable[[Sequence[Any], dict[str, Any]], Args]
    attrs: frozenset[str] | None = None
    infer: Callable[[dict[str, Any], list["TensorType"]], list["TensorType"]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def run(self, inputs: Sequence[Any], attrs: dict[str, Any], sizes: dict[str, int] | None = None) -> list[Any]:
        """Call the kernel with concrete inputs; always returns a list of outputs.

        `sizes` binds the symbols of symbolic size attributes (`view{size=[batch, -1]}`).
        """
        from ..types import attr_symbols, bind_sizes

        if attr_symbols(attrs):
            attrs = bind_sizes(attrs, sizes or {})
        args, kwargs = self.bind(inputs, attrs)
        result = self.fn(*args, **kwargs)
        return list(result) if isinstance(result, (tuple, list)) else [result]
