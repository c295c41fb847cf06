"""A live Chroma writer: adds batches of 200 seeded vectors to collection "docs" in PATH until
STOP exists; writes the count to READY after every batch. python chroma_writer.py PATH READY STOP"""
import os
import sys

import chromadb
import numpy as np

path, ready, stop = sys.argv[1:4]
client = chromadb.PersistentClient(path=path)
col = client.get_or_create_collection("docs", metadata={"hnsw:space": "l2"})
rng = np.random.default_rng(5)
batch = 0
while not os.path.exists(stop) and batch < 500:
    x = rng.standard_normal((200, 32), dtype=np.float32)
    col.add(ids=[str(batch * 200 + i) for i in range(200)], embeddings=x.tolist())
    batch += 1
    with open(ready + ".tmp", "w") as f:
        f.write(str(col.count()))
    os.replace(ready + ".tmp", ready)
