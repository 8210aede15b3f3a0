"""Fusion passes: BN and affine folding, linear merging, structural reparameterization, attention fusion,
ONNX Runtime contrib fusions."""
from . import affine, attention, bn, contrib, linear, reparam  # noqa: F401  (registration)
