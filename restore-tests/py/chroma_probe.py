"""Tresor probe command for a Chroma persistent directory ($TRESOR_INDEX): the top-10 of 12 fixed
queries in collection "docs", as the golden-query JSON."""
import json
import os

import chromadb
import numpy as np

client = chromadb.PersistentClient(path=os.environ["TRESOR_INDEX"])
col = client.get_collection("docs")
queries = np.random.default_rng(42).standard_normal((12, 32), dtype=np.float32)
r = col.query(query_embeddings=queries.tolist(), n_results=10)
results = [[[i, float(d)] for i, d in zip(ids, ds)] for ids, ds in zip(r["ids"], r["distances"])]
print(json.dumps({"k": 10, "exact": False, "min_recall": 1.0, "results": results}))
