"""Write tests/fixtures/bm25_rank_bm25.json: BM25 scores of rank_bm25 (BM25Okapi, the Python
reference BM25 implementation) on a small seeded corpus, for the Rust BM25's differential test.

Run with the pinned reference venv: .venv/bin/python scripts/parity/make_bm25_fixtures.py
The corpus is already tokenised (analysis is tested separately); it mixes frequent words (negative
Okapi idf, replaced by epsilon * mean idf), rare words, repeated terms and an empty document.
"""
import json
import random
from pathlib import Path

import rank_bm25

random.seed(20230824)
common = ["model", "text", "task", "data"]
vocab = [f"w{i}" for i in range(40)]
docs = []
for d in range(60):
    n = random.randint(0, 30) if d else 0
    doc = [random.choice(common) if random.random() < 0.35 else random.choice(vocab) for _ in range(n)]
    docs.append(doc)
queries = [[random.choice(common + vocab) for _ in range(random.randint(1, 6))] for _ in range(12)]
queries.append(["model", "model", "w3"])
queries.append(["not-in-vocabulary"])

cases = []
for k1, b in [(1.2, 0.75), (1.5, 0.75), (0.9, 0.4)]:
    bm25 = rank_bm25.BM25Okapi(docs, k1=k1, b=b, epsilon=0.25)
    cases.append({"k1": k1, "b": b, "epsilon": 0.25, "scores": [list(map(float, bm25.get_scores(q))) for q in queries]})

out = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "bm25_rank_bm25.json"
out.write_text(json.dumps({"generator": f"rank_bm25 {rank_bm25.__name__} 0.2.2 BM25Okapi", "docs": docs, "queries": queries, "cases": cases}, indent=1))
print(f"wrote {out}")
