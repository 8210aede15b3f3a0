"""Analyses over the IR: cost model, activation statistics, memory."""
