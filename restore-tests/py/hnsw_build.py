"""Build and save an hnswlib index of seeded random vectors: python hnsw_build.py PATH [N] [D]."""
import sys

import hnswlib
import numpy as np

path = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 5000
d = int(sys.argv[3]) if len(sys.argv) > 3 else 32
x = np.random.default_rng(11).standard_normal((n, d), dtype=np.float32)
index = hnswlib.Index(space="l2", dim=d)
index.init_index(max_elements=n, ef_construction=100, M=16, random_seed=3)
index.add_items(x, np.arange(n))
index.save_index(path)
