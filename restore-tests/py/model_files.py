"""Model files written by the real libraries: a GGUF by gguf's GGUFWriter and a sharded Hugging Face
directory by safetensors (two shards and their index). python model_files.py DIR"""
import json
import os
import sys

import gguf
import numpy as np
from safetensors.numpy import save_file

out = sys.argv[1]
rng = np.random.default_rng(3)
os.makedirs(f"{out}/gguf", exist_ok=True)
w = gguf.GGUFWriter(f"{out}/gguf/model.gguf", "llama")
w.add_block_count(1)
w.add_tensor("token_embd.weight", rng.standard_normal((100, 64)).astype(np.float32))
w.add_tensor("output_norm.weight", np.ones(63, dtype=np.float16))
w.add_tensor("blk.0.attn_q.weight", rng.standard_normal((64, 64)).astype(np.float16))
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()

hf = f"{out}/hf"
os.makedirs(hf, exist_ok=True)
shards = {
    "model-00001-of-00002.safetensors": {f"layers.{i}.weight": rng.standard_normal((128, 64)).astype(np.float32) for i in range(3)},
    "model-00002-of-00002.safetensors": {f"layers.{i}.weight": rng.standard_normal((128, 64)).astype(np.float32) for i in range(3, 5)},
}
weight_map = {}
for name, tensors in shards.items():
    save_file(tensors, f"{hf}/{name}", metadata={"format": "pt"})
    weight_map.update({t: name for t in tensors})
with open(f"{hf}/model.safetensors.index.json", "w") as f:
    json.dump({"metadata": {"total_size": 5 * 128 * 64 * 4}, "weight_map": weight_map}, f)
with open(f"{hf}/config.json", "w") as f:
    json.dump({"architectures": ["Tiny"]}, f)
