"""`carve export GRAPH --to onnx|torch -o PATH [--opset N] [--contrib onnxruntime]`."""
from __future__ import annotations

import argparse

from ..errors import CarveError
from .common import printable, read_graph, refuse_overwriting_input


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="write a graph as an ONNX file or a PyTorch module")
    parser.add_argument("graph", help="a saved graph directory, .ir file or .onnx file")
    parser.add_argument("--to", choices=["onnx", "torch"], required=True)
    parser.add_argument("-o", "--output", required=True,
                        help="the .onnx file, or the directory for model.py + weights.safetensors")
    from ..ir.ops.onnx_ops import DEFAULT_OPSET, OPSET_RANGE

    parser.add_argument("--opset", type=int, default=None,
                        help=f"the ONNX opset to write ({OPSET_RANGE.start}-{OPSET_RANGE.stop - 1}); default: the "
                             f"lowest the graph needs, at least {DEFAULT_OPSET}")
    from ..api import CONTRIB_PASSES

    parser.add_argument("--contrib", choices=sorted(CONTRIB_PASSES), default=None,
                        help="ONNX only: write that runtime's fused contrib ops (SkipLayerNormalization, BiasGelu, "
                             "Attention, ...) where the graph's structure allows")
    parser.add_argument("--external-data", action="store_true",
                        help="write the ONNX weights to OUTPUT.data beside the model, one tensor at a time "
                             "(default: only past protobuf's 2 GB limit)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..backends.torch import EXPORT_FILES

    refuse_overwriting_input(args.graph, args.output, EXPORT_FILES if args.to == "torch" else ())
    if args.contrib and args.to != "onnx":
        raise CarveError(f"--contrib {args.contrib} applies to ONNX output only",
                         hint="drop --contrib or use --to onnx")
    graph = read_graph(args.graph)
    if args.to == "torch":
        from ..backends.torch import export_torch

        export_torch(graph, args.output)
        print(printable(f"wrote {args.output}/model.py and {args.output}/weights.safetensors"))
        return 0
    from ..api import to_onnx

    model = to_onnx(graph, args.output, opset=args.opset, contrib=args.contrib,
                    external_data=args.external_data or None)
    print(printable(f"wrote {args.output} (opset {model.opset_import[0].version})"))
    return 0
