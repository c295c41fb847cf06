"""Tresor probe command for an hnswlib index: loads $TRESOR_INDEX and prints the top-10 of 20 fixed
queries as the golden-query JSON. Usage: python hnsw_probe.py D."""
import json
import os
import sys

import hnswlib
import numpy as np

d = int(sys.argv[1]) if len(sys.argv) > 1 else 32
index = hnswlib.Index(space="l2", dim=d)
index.load_index(os.environ["TRESOR_INDEX"])
index.set_ef(200)
queries = np.random.default_rng(99).standard_normal((20, d), dtype=np.float32)
labels, distances = index.knn_query(queries, k=10)
results = [[[int(i), float(x)] for i, x in zip(l, ds)] for l, ds in zip(labels, distances)]
print(json.dumps({"k": 10, "exact": False, "min_recall": 0.99, "results": results}))
