"""chrF++ over 10,570 SQuAD-dev paragraph pairs: `p2m score` against sacrebleu, each as a whole
command (process start-up, imports and file reading included), on the same file, on this machine.

    .venv/bin/python benches/chrf_side_by_side.py [--p2m target/release/p2m] [--runs 3]

Prints both scores (they must agree) and the best wall time of each over the runs.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SACRE = r"""
import json, sys
from sacrebleu.metrics import CHRF
rows = [json.loads(l) for l in open(sys.argv[1])]
print(CHRF(word_order=2).corpus_score([r["prediction"] for r in rows], [[r["references"][0] for r in rows]]).score)
"""


def best(cmd, runs):
    times, out = [], ""
    for _ in range(runs):
        start = time.perf_counter()
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        times.append(time.perf_counter() - start)
    return min(times), out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--p2m", default=os.path.join(ROOT, "target/release/p2m"))
    ap.add_argument("--mirror", default=os.environ.get("P2M_MIRROR", os.path.join(ROOT, "../shared/mirror")))
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    squad = json.load(open(os.path.join(a.mirror, "squad/dev-v1.1.json")))
    ctx = [p["context"] for art in squad["data"] for p in art["paragraphs"] for _ in p["qas"]]
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for i, c in enumerate(ctx):
            f.write(json.dumps({"prediction": c, "references": [ctx[(i + 1) % len(ctx)]]}) + "\n")
        pairs = f.name
    try:
        ours_t, ours = best([a.p2m, "score", "-p", pairs, "-m", "chrf++", "--json"], a.runs)
        theirs_t, theirs = best([sys.executable, "-c", SACRE, pairs], a.runs)
    finally:
        os.unlink(pairs)
    ours_v = json.loads(ours)["scores"][0]["value"]
    theirs_v = float(theirs)
    assert abs(ours_v - theirs_v) < 1e-6, (ours_v, theirs_v)
    import sacrebleu
    print(f"chrF++ over {len(ctx)} pairs: {ours_v:.4f} (both)")
    print(f"p2m score {ours_t:.3f} s | sacrebleu {sacrebleu.__version__} {theirs_t:.3f} s | ratio {theirs_t / ours_t:.1f}x")
    print(f"conditions: {os.cpu_count()} cores, load {open('/proc/loadavg').read().split()[:3]}, best of {a.runs}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")


if __name__ == "__main__":
    main()
