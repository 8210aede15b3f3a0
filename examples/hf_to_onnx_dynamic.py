"""Export a Hugging Face transformer to ONNX with dynamic batch and sequence length, and check it.

    python examples/hf_to_onnx_dynamic.py [--fast]

A BERT encoder (random init from a small config, so nothing is downloaded; swap in
`AutoModel.from_pretrained(...)` for your own) is captured at batch 2 x 8 tokens with both
axes symbolic, written to ONNX, and run in onnxruntime at other batch sizes and lengths,
fed by the model's own input names, against eager PyTorch.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from transformers import BertConfig, BertModel

import torchcarve as tc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="a tiny config (used by the tests)")
    args = parser.parse_args()
    layers, hidden = (2, 32) if args.fast else (6, 384)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=1000, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=4 * hidden)
    model = BertModel(config).eval()

    example = (torch.randint(0, 1000, (2, 8)), torch.ones(2, 8, dtype=torch.int64))   # input_ids, attention_mask
    axes = {0: "batch", 1: "seq"}
    graph = tc.capture(model, example, dynamic={"input_ids": axes, "attention_mask": axes})
    path = Path(tempfile.mkdtemp(prefix="carve-hf-")) / "bert.onnx"
    tc.to_onnx(graph, path)

    proto = onnx.load(str(path))
    print("inputs: ", [(v.name, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]) for v in proto.graph.input])
    print("outputs:", [v.name for v in proto.graph.output])
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, seq in [(1, 5), (3, 8), (4, 17)]:
        feeds = {"input_ids": torch.randint(0, 1000, (batch, seq)), "attention_mask": torch.ones(batch, seq, dtype=torch.int64)}
        with torch.no_grad():
            expected = model(**feeds).last_hidden_state.numpy()
        actual = session.run(["last_hidden_state"], {k: v.numpy() for k, v in feeds.items()})[0]
        difference = float(np.abs(expected - actual).max())
        print(f"batch {batch} x seq {seq}: max |ORT - eager| = {difference:.1e}")
        assert difference < 1e-4


if __name__ == "__main__":
    main()
