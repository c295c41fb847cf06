"""Build and save a FAISS flat L2 index of seeded random vectors: python faiss_flat.py PATH [N] [D]."""
import sys

import faiss
import numpy as np

path = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 5000
d = int(sys.argv[3]) if len(sys.argv) > 3 else 64
x = np.random.default_rng(7).standard_normal((n, d), dtype=np.float32)
index = faiss.IndexFlatL2(d)
index.add(x)
faiss.write_index(index, path)
