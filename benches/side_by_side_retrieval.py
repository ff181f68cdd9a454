"""rank_bm25 (BM25Okapi) on the same analysed corpus and queries as benches/retrieval.rs.

Run after the Rust bench (it writes the corpus), with the reference venv:
    .venv/bin/python benches/side_by_side_retrieval.py [--cache .cache]
Prints seconds for the index build and per query (score every card + top 5) as JSON.
"""
import argparse, json, pathlib, time

import numpy as np
import rank_bm25


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default=".cache")
    ap.add_argument("--iters", type=int, default=5)
    args = ap.parse_args()
    data = json.loads((pathlib.Path(args.cache) / "retrieval" / "bm25_bench_corpus.json").read_text())
    docs, queries = data["docs"], data["queries"]
    t0 = time.perf_counter()
    bm25 = rank_bm25.BM25Okapi(docs, k1=1.2, b=0.75)
    build = time.perf_counter() - t0
    out = {"rank_bm25": "0.2.2", "docs": len(docs), "build_s": build}
    for i, q in enumerate(queries):
        times = []
        for _ in range(args.iters):
            t0 = time.perf_counter()
            scores = bm25.get_scores(q)
            top = np.argsort(-scores)[:5]
            times.append(time.perf_counter() - t0)
        out[f"query_top5_task{i}_s"] = {"median": float(np.median(times)), "terms": len(q), "top": [int(t) for t in top]}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
