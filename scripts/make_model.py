"""Writes a small Hugging Face-style model directory: model.safetensors plus config and
tokenizer files. Usage: make_model.py OUT_DIR [SIZE_MB]"""
import json
import os
import sys

import numpy as np
from safetensors.numpy import save_file

out = sys.argv[1]
size_mb = float(sys.argv[2]) if len(sys.argv) > 2 else 64
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(0)
hidden = 512
layers = max(1, int(size_mb * 2**20 / (4 * (4 * hidden * hidden + 2 * hidden))))
tensors = {"embed.weight": rng.standard_normal((1000, hidden), dtype=np.float32)}
for i in range(layers):
    tensors[f"layers.{i}.attn.weight"] = rng.standard_normal((hidden, 4 * hidden), dtype=np.float32)
    tensors[f"layers.{i}.norm.weight"] = np.ones(hidden, dtype=np.float16)
    tensors[f"layers.{i}.norm.bias"] = np.zeros(hidden, dtype=np.float16)
save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "np"})
with open(os.path.join(out, "config.json"), "w") as f:
    json.dump({"model_type": "demo", "hidden_size": hidden, "num_hidden_layers": layers}, f, indent=2)
with open(os.path.join(out, "tokenizer.json"), "w") as f:
    json.dump({"version": "1.0", "model": {"vocab": {f"tok{i}": i for i in range(1000)}}}, f)
print(f"wrote {out}: {len(tensors)} tensors, {os.path.getsize(os.path.join(out, 'model.safetensors'))} bytes")
