"""torchcarve: a graph compiler that makes trained neural networks smaller and faster."""
from .api import Compiled, compile, load, save, to_onnx
from .backends.torch import export_torch, to_torch, with_module_weights
from .draw import draw, notebook_svg
from .errors import CaptureError, CarveError, ParseError, PipelineError, ShapeError, UnsupportedOpError, VerifyError
from .frontends import capture
from .frontends.onnx import from_onnx
from .ir import Graph, Node, ParamStore, TensorType, Value, parse, verify
from .passes import OptimizeResult, optimize
from .progress import show_progress
from .tune import TuneResult, tune

__version__ = "0.1.0"

# notebooks draw graphs; attached here, at the top layer, so ir/ never imports draw/
Graph._repr_svg_ = notebook_svg  # type: ignore[attr-defined]

__all__ = [
    "CaptureError", "CarveError", "Compiled", "Graph", "Node", "OptimizeResult", "optimize", "ParamStore", "ParseError", "PipelineError",
    "ShapeError", "TensorType", "UnsupportedOpError", "Value", "VerifyError", "capture", "compile", "draw", "export_torch",
    "from_onnx", "load", "parse", "save", "show_progress", "to_onnx", "to_torch", "TuneResult", "tune", "verify",
    "with_module_weights",
]
