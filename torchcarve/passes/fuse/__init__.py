"""Fusion passes: BN and affine folding, linear merging, structural reparameterization, attention fusion."""
from . import affine, attention, bn, linear, reparam  # noqa: F401  (registration)
