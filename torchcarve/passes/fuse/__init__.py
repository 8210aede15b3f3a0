"""Fusion passes: BN folding, linear merging, structural reparameterization, attention fusion."""
from . import attention, bn, linear, reparam  # noqa: F401  (registration)
