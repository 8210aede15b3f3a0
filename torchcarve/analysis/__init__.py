"""Analyses over the IR: cost model, numeric-equivalence oracle, sensitivity."""
