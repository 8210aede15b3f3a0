"""Op coverage on real architectures: every torchvision classifier, a timm sample, HF configs (random init).

Each model runs in its own process with a timeout through: capture -> to_torch parity -> fuse parity ->
to_onnx + ORT parity -> prune (params before / after, then runs in ORT) -> dynamic int8 (runs in ORT);
beside, torch.onnx.export (TorchScript exporter, + ORT parity) and torch-pruning (the recipe of
benchmarks/pruning.py, params before / after) on the same model. A cell is `ok`, a ratio, or the
error class and the start of its message. Nothing is downloaded: weights=None / pretrained=False /
configs built in code. Needs the bench venv (torchvision, timm, torch-pruning), see benchmarks/README.md.

    python benchmarks/coverage.py [--filter REGEX] [--timeout 300] [--jobs 1] [--rows rows.jsonl] [--out benchmarks/README.md]
"""
from __future__ import annotations

import argparse
import copy
import io
import json
import re
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STAGES = ["capture", "to_torch", "fuse", "onnx", "prune", "prune_ort", "int8_ort", "torch_onnx", "tp_prune"]
HEADINGS = {"capture": "capture", "to_torch": "to_torch parity", "fuse": "fuse parity", "onnx": "ONNX + ORT parity",
            "prune": "prune params ÷", "prune_ort": "pruned in ORT", "int8_ort": "int8 in ORT",
            "torch_onnx": "torch.onnx + ORT parity", "tp_prune": "torch-pruning params ÷"}
RTOL = 1e-3  # max |got - expected| / max |expected|: random-init deep nets reach large magnitudes
MARK = "@@stage "


def define_torchvision_schemas() -> None:
    """Let PyPI's torchvision (a CUDA build) import beside the CPU torch wheel.

    Its C++ ops do not load, and its Python side registers fake kernels for `torchvision::nms`/`qnms`
    at import, which fails unless the schemas exist. Classification models never call them."""
    try:
        torch.ops.torchvision.nms.default
        return
    except (AttributeError, RuntimeError):
        pass
    library = torch.library.Library("torchvision", "DEF")
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    define_torchvision_schemas.library = library  # keep the definitions alive


# ---- the models ------------------------------------------------------------------------------------

TIMM = ["vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "swin_tiny_patch4_window7_224", "convnext_atto",
        "convnextv2_atto", "efficientnet_b0", "mobilenetv3_small_050", "mobilenetv4_conv_small", "ghostnet_100",
        "repvgg_a0", "mobileone_s0", "fastvit_t8", "levit_128s", "efficientformer_l1", "efficientformerv2_s0",
        "edgenext_xx_small", "mobilevit_xxs", "mobilevitv2_050", "poolformer_s12", "resnet18d", "regnetx_002",
        "rexnet_100", "hgnetv2_b0", "tiny_vit_5m_224", "xcit_nano_12_p16_224", "pvt_v2_b0", "coatnet_nano_rw_224",
        "maxvit_nano_rw_256", "mixer_s16_224", "resmlp_12_224", "eva02_tiny_patch14_224", "efficientvit_b0",
        "efficientvit_m0", "inception_next_atto", "starnet_s1", "lcnet_050", "repghostnet_050", "crossvit_tiny_240",
        "gcvit_xxtiny"]

TEXT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=512,
            max_position_embeddings=128)
DECODER = dict(TEXT, num_key_value_heads=2, use_cache=False)
MOE = dict(DECODER, num_local_experts=4, num_experts_per_tok=2)
# name -> (model class, config class, config kwargs, input: "text" (1x16 token ids) | "image" (1x3xSxS))
HF = {
    "bert": ("BertModel", "BertConfig", TEXT, "text"),
    "distilbert": ("DistilBertModel", "DistilBertConfig",
                   dict(dim=64, n_layers=2, n_heads=4, hidden_dim=128, vocab_size=512), "text"),
    "roberta": ("RobertaModel", "RobertaConfig", dict(TEXT, max_position_embeddings=130), "text"),
    "albert": ("AlbertModel", "AlbertConfig", dict(TEXT, embedding_size=32), "text"),
    "gpt2": ("GPT2LMHeadModel", "GPT2Config", dict(n_embd=64, n_layer=2, n_head=4, vocab_size=512, n_positions=128,
                                                   use_cache=False), "text"),
    "llama": ("LlamaForCausalLM", "LlamaConfig", DECODER, "text"),
    "mistral": ("MistralForCausalLM", "MistralConfig", DECODER, "text"),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config", DECODER, "text"),
    "phi3": ("Phi3ForCausalLM", "Phi3Config", dict(DECODER, pad_token_id=0), "text"),
    "gemma": ("GemmaForCausalLM", "GemmaConfig", dict(DECODER, head_dim=16), "text"),
    "t5-encoder": ("T5EncoderModel", "T5Config", dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                                                      vocab_size=512, use_cache=False), "text"),
    "mixtral-moe": ("MixtralForCausalLM", "MixtralConfig", MOE, "text"),
    "qwen2-moe": ("Qwen2MoeForCausalLM", "Qwen2MoeConfig",
                  dict(DECODER, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64,
                       shared_expert_intermediate_size=64), "text"),
    "vit": ("ViTModel", "ViTConfig", dict(TEXT, image_size=32, patch_size=8), "image"),
    "swin": ("SwinModel", "SwinConfig", dict(image_size=32, patch_size=2, embed_dim=16, depths=[1, 1],
                                             num_heads=[2, 4], window_size=4), "image"),
    "convnext": ("ConvNextModel", "ConvNextConfig", dict(hidden_sizes=[16, 32], depths=[1, 1], num_stages=2,
                                                         image_size=32), "image"),
}


def model_names() -> list[str]:
    """Every model this benchmark knows, as family/name."""
    define_torchvision_schemas()
    import torchvision

    return ([f"torchvision/{n}" for n in torchvision.models.list_models(module=torchvision.models)]
            + [f"timm/{n}" for n in TIMM] + [f"hf/{n}" for n in HF])


def build(name: str) -> tuple[torch.nn.Module, tuple]:
    """A randomly initialised model in eval mode and one example input."""
    family, model = name.split("/", 1)
    torch.manual_seed(0)
    define_torchvision_schemas()  # timm and transformers import torchvision too
    if family == "torchvision":
        import torchvision

        return torchvision.models.get_model(model, weights=None).eval(), (torch.randn(1, 3, 224, 224),)
    if family == "timm":
        import timm

        net = timm.create_model(model, pretrained=False).eval()
        return net, (torch.randn(1, *net.pretrained_cfg["input_size"]),)
    import transformers

    model_class, config_class, kwargs, kind = HF[model]
    config = getattr(transformers, config_class)(**kwargs, attn_implementation="eager")
    net = getattr(transformers, model_class)(config).eval()
    if kind == "image":
        return net, (torch.randn(1, 3, kwargs["image_size"], kwargs["image_size"]),)
    return net, (torch.randint(1, 500, (1, 16)),)


# ---- the stages (run in the child process) ---------------------------------------------------------

class Mismatch(Exception):
    """Outputs differ from eager PyTorch."""


def flat(outputs: Any) -> list[np.ndarray]:
    from torch.utils._pytree import tree_flatten

    return [t.detach().float().numpy() for t in tree_flatten(outputs)[0] if isinstance(t, torch.Tensor)]


def check(got: list[np.ndarray], expected: list[np.ndarray]) -> str:
    if len(got) != len(expected):
        raise Mismatch(f"{len(got)} outputs, expected {len(expected)}")
    worst = 0.0
    for a, e in zip(got, expected):
        if a.shape != e.shape:
            raise Mismatch(f"shape {list(a.shape)} != {list(e.shape)}")
        worst = max(worst, float(np.abs(a.astype(np.float64) - e).max() / max(np.abs(e).max(), 1e-6)))
    if not worst <= RTOL:
        raise Mismatch(f"relative error {worst:.1e}")
    return "ok"


def ort_outputs(model: Any, inputs: tuple) -> list[np.ndarray]:
    import onnxruntime as ort

    data = model if isinstance(model, bytes) else model.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    feeds = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs)}
    return [np.asarray(o, dtype=np.float32) if np.issubdtype(np.asarray(o).dtype, np.floating) else np.asarray(o)
            for o in session.run(None, feeds)]


def same_shapes(got: list[np.ndarray], expected: list[np.ndarray]) -> str:
    shapes = [list(a.shape) for a in got]
    if shapes != [list(e.shape) for e in expected]:
        raise Mismatch(f"output shapes {shapes}")
    return "ok"


def torch_pruning_ratio(model: torch.nn.Module, inputs: tuple, expected: list[np.ndarray]) -> str:
    """torch-pruning's recipe from benchmarks/pruning.py; counts only if the outputs keep their shapes."""
    import torch_pruning as tp
    from pruning import RATIO, ROUND_TO, _num_heads, _update_head_counts

    model = copy.deepcopy(model)
    before = stored(model)
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    pruner = tp.pruner.MagnitudePruner(model, inputs, importance=tp.importance.MagnitudeImportance(p=1),
                                       pruning_ratio=RATIO, global_pruning=False, ignored_layers=layers[-1:],
                                       round_to=ROUND_TO, num_heads=_num_heads(model), prune_num_heads=True,
                                       prune_head_dims=False, head_pruning_ratio=RATIO)
    pruner.step()
    _update_head_counts(model, pruner)
    with torch.no_grad():
        same_shapes(flat(model(*inputs)), expected)
    return f"{before / stored(model):.2f}x"


def stored(model: torch.nn.Module) -> int:
    """Floating-point numbers in the state dict: weights and norm statistics, as the graph's params count them."""
    return sum(t.numel() for t in model.state_dict().values() if t.is_floating_point())


def torch_onnx(model: torch.nn.Module, inputs: tuple, expected: list[np.ndarray]) -> str:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        torch.onnx.export(model, inputs, str(path), dynamo=False, opset_version=18)
        return check(ort_outputs(path.read_bytes(), inputs), expected)


def run_stages(name: str) -> None:
    """Print one `@@stage` JSON line per stage as it finishes (the parent keeps them even on a timeout)."""
    import torchcarve as tc
    from pruning import SPEC

    model, inputs = build(name)
    with torch.no_grad():
        expected = flat(model(*inputs))
    state: dict[str, Any] = {}

    def capture() -> str:
        state["graph"] = tc.capture(model, inputs)
        return "ok"

    def to_torch() -> str:
        with torch.no_grad():
            return check(flat(tc.to_torch(state["graph"])(*inputs)), expected)

    def fuse() -> str:
        with torch.no_grad():
            return check(flat(tc.to_torch(tc.optimize(state["graph"], "fuse").graph)(*inputs)), expected)

    def onnx() -> str:
        return check(ort_outputs(tc.to_onnx(state["graph"]), inputs), expected)

    def prune() -> str:
        result = tc.optimize(state["graph"], SPEC)
        state["pruned"] = result.graph
        before, after = result.report[0].params
        return f"{before / after:.2f}x"

    def prune_ort() -> str:
        return same_shapes(ort_outputs(tc.to_onnx(state["pruned"]), inputs), expected)

    def int8_ort() -> str:
        quantized = tc.optimize(state["graph"], "quantize{mode=dynamic}").graph
        return same_shapes(ort_outputs(tc.to_onnx(quantized), inputs), expected)

    steps: dict[str, Callable[[], str]] = {
        "capture": capture, "to_torch": to_torch, "fuse": fuse, "onnx": onnx, "prune": prune,
        "prune_ort": prune_ort, "int8_ort": int8_ort,
        "torch_onnx": lambda: torch_onnx(model, inputs, expected),
        "tp_prune": lambda: torch_pruning_ratio(model, inputs, expected)}
    needs = {"to_torch": "graph", "fuse": "graph", "onnx": "graph", "prune": "graph", "prune_ort": "pruned",
             "int8_ort": "graph"}
    for stage in STAGES:
        if needs.get(stage) and needs[stage] not in state:
            cell = "-"
        else:
            cell = attempt(steps[stage])
        print(MARK + json.dumps({"stage": stage, "cell": cell}), flush=True)


def attempt(step: Callable[[], str]) -> str:
    """The step's cell, or its error class and the first line of its message; its chatter is swallowed."""
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            return step()
        except Exception as e:  # noqa: BLE001 - every failure is a table cell
            message = (str(e).strip().splitlines() or [""])[0]
            return f"{type(e).__name__}: {message[:90]}"


# ---- the parent: one process per model, the table ---------------------------------------------------

def run_model(name: str, timeout: int) -> dict[str, Any]:
    start = time.perf_counter()
    command = [sys.executable, __file__, "--one", name]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        last = (done.stderr.strip().splitlines() or [""])[-1][:80]
        stdout, ending = done.stdout, (f"crashed: {last}" if done.returncode else "-")
    except subprocess.TimeoutExpired as e:
        stdout, ending = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), "timeout"
    row = {"model": name, **{s: ending for s in STAGES}}
    for line in stdout.splitlines():
        if line.startswith(MARK):
            record = json.loads(line[len(MARK):])
            row[record["stage"]] = record["cell"]
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def passed(cell: str) -> bool:
    return cell == "ok" or cell.endswith("x")


def markdown(rows: list[dict[str, Any]]) -> str:
    """The totals, then one row per model (cells cut to stay readable)."""
    lines = ["| | " + " | ".join(HEADINGS[s] for s in STAGES) + " |", "|---" * (len(STAGES) + 1) + "|",
             f"| passed (of {len(rows)}) | " + " | ".join(str(sum(passed(r[s]) for r in rows)) for s in STAGES) + " |",
             "", "| model | " + " | ".join(HEADINGS[s] for s in STAGES) + " | s |",
             "|---" * (len(STAGES) + 2) + "|"]
    for row in rows:
        cells = [row[s].replace("|", "/")[:60] for s in STAGES]
        lines.append(f"| {row['model']} | " + " | ".join(cells) + f" | {row['seconds']} |")
    return "\n".join(lines) + "\n"


def failure_classes(rows: list[dict[str, Any]]) -> str:
    """Failures per stage grouped by error class and message start, most common first."""
    counts: dict[tuple[str, str], int] = {}
    for row in rows:
        for stage in STAGES:
            cell = row[stage]
            if not passed(cell) and cell != "-":
                key = (stage, re.sub(r"\d+(\.\d+)?", "N", cell)[:70])
                counts[key] = counts.get(key, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])
    return "\n".join(f"| {stage} | {cell.replace('|', '/')} | {n} |" for (stage, cell), n in ranked)


def load_rows(path: Path | None) -> dict[str, dict[str, Any]]:
    if path is None or not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {row["model"]: row for row in rows}


def append_results(path: Path, command: str, rows: list[dict[str, Any]]) -> None:
    """Append a dated `Coverage` section (header, totals, rows, failure classes) to `path`."""
    from machine import header

    text = (f"\n## Coverage\n\n{header(command)}\n{markdown(rows)}\n### Failure classes\n\n"
            f"| stage | error | models |\n|---|---|---|\n{failure_classes(rows)}\n")
    with path.open("a") as handle:
        handle.write(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filter", default="", help="regex over family/name (torchvision/resnet18, timm/..., hf/...)")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per model")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--rows", type=Path, help="JSONL of finished rows: appended to, and models already in it skipped")
    parser.add_argument("--out", type=Path, help="append the table to this markdown file (benchmarks/README.md)")
    parser.add_argument("--list", action="store_true", help="print the model names and stop")
    parser.add_argument("--render", action="store_true", help="run nothing: the table of the rows in --rows")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        run_stages(args.one)
        return
    names = [n for n in model_names() if re.search(args.filter, n)]
    if args.list:
        print("\n".join(names))
        return
    done = load_rows(args.rows)
    todo = [] if args.render else [n for n in names if n not in done]

    def one(name: str) -> dict[str, Any]:
        row = run_model(name, args.timeout)
        print(json.dumps(row), flush=True)
        if args.rows:
            with args.rows.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
        return row

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        done.update({row["model"]: row for row in pool.map(one, todo)})
    rows = [done[n] for n in names if n in done]
    print(markdown(rows))
    if args.out:
        command = "python benchmarks/coverage.py " + " ".join(a for a in sys.argv[1:])
        append_results(args.out, command.strip(), rows)


if __name__ == "__main__":
    main()
