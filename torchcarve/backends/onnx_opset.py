"""What each ONNX opset holds, read from onnx's own schemas: the first opset of an op (or of one of its
attributes) and the op's schema in force at an opset; attribute values the schemas cannot say, as a table."""
from __future__ import annotations

from functools import lru_cache

import onnx


# (op type, attribute, value) -> the first opset that accepts that value
VALUE_SINCE: dict[tuple[str, str, bytes], int] = {
    ("Pad", "mode", b"wrap"): 19,
    ("Resize", "coordinate_transformation_mode", b"half_pixel_symmetric"): 19,
}


@lru_cache(maxsize=None)
def _versions() -> dict[str, list[onnx.defs.OpSchema]]:
    """Default-domain op type -> its schemas, oldest first."""
    table: dict[str, list[onnx.defs.OpSchema]] = {}
    for schema in onnx.defs.get_all_schemas_with_history():
        if schema.domain in ("", "ai.onnx"):
            table.setdefault(schema.name, []).append(schema)
    return {op: sorted(schemas, key=lambda s: s.since_version) for op, schemas in table.items()}


def first_opset_with(op_type: str, attribute: str = "") -> int:
    """The first opset that has `op_type` (with `attribute`, when given); 0 for ops onnx does not know."""
    for schema in _versions().get(op_type, []):
        if not attribute or attribute in schema.attributes:
            return schema.since_version
    return 0


@lru_cache(maxsize=None)
def schema_at(op_type: str, opset: int) -> onnx.defs.OpSchema:
    """The schema of `op_type` in force at `opset` (the caller checked that the op exists there)."""
    return onnx.defs.get_schema(op_type, opset, "")


def first_opset_with_value(op_type: str, attribute: onnx.AttributeProto) -> int:
    """The first opset that accepts this attribute value (0: any opset that has the attribute)."""
    return VALUE_SINCE.get((op_type, attribute.name, attribute.s), 0) if attribute.type == attribute.STRING else 0
