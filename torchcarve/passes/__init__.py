"""Passes: the registry, pipelines, the PassManager and every registered pass.

Importing a pass module registers its passes; add new pass modules to the import list below.
"""
from .base import PASSES, Pass, PassContext, PassResult, register_pass
from .manager import OptimizeResult, PassManager, PassReport, Report, optimize
from .pipeline import ALIASES, parse_pipeline, pass_help
from .rewrite import ANY, P, PARAM, Pat, Rewriter, apply_rules

from . import cleanup, fuse  # noqa: E402,F401  (registration)
from . import lowrank  # noqa: E402,F401  (registration)

__all__ = [
    "ALIASES", "ANY", "OptimizeResult", "P", "PARAM", "PASSES", "Pass", "PassContext", "PassManager", "PassReport",
    "PassResult", "Report", "Pat", "Rewriter", "apply_rules", "optimize", "parse_pipeline", "pass_help", "register_pass",
]
from . import quantize  # noqa: E402,F401  (registration)
from . import prune  # noqa: E402,F401  (registration)
from . import blocks  # noqa: E402,F401  (registration)
from . import experts  # noqa: E402,F401  (registration)
from . import kan  # noqa: E402,F401  (registration)
from . import moe_dispatch  # noqa: E402,F401  (registration)
