"""The Python side of benches/side_by_side.sh: shared inputs, the reference measurements, and the
table of ratios. Run through the script (it sets up the venv and the order):

    side_by_side.py prepare --work DIR [--mirror M]       # inputs both sides read
    side_by_side.py measure --work DIR --out FILE [--p2m BIN] [--quick] [--only S]
    side_by_side.py predict --work DIR --out FILE [--p2m BIN] [--llama-python PY] [--quick] [--only S]
    side_by_side.py table [RUST.json PYTHON.json] [--predict FILE] [--markdown FILE]

References: sacrebleu (chrF++), the official SQuAD v1.1 normalisation (exact match), scipy
(Kendall's tau-b), rank_bm25 (BM25), sentence-transformers (MiniLM embeddings), bert_score,
transformers + torch.optim.AdamW (training, fp32 eager and bf16 autocast; decoding), llama.cpp
through llama-cpp-python (decoding), and torch's matmul (the roofs). Timings are medians of a few
runs after one warm-up, like the Rust side; both use OMP_NUM_THREADS intra-op threads.

`predict` times whole `p2m predict` commands (the plain path, the prefix cache, the llama.cpp
engine) on the laptop students of Tables 1 against transformers `generate` and llama-cpp-python's
server fed the same prompts, and counts predictions equal to the plain path's.
"""
import argparse
import datetime
import json
import os
import pathlib
import re
import string
import subprocess
import sys
import time
from collections import Counter

ROOT = pathlib.Path(__file__).resolve().parent.parent
DECODE_PROMPT = "Once upon a time, in a village by the sea, there lived"
DECODE_TOKENS = 128
ROOF_N = 2048
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


# ------------------------------------------------------------------------------------------------
# prepare
# ------------------------------------------------------------------------------------------------

def prepare(a):
    import numpy as np

    work = pathlib.Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    squad = json.load(open(pathlib.Path(a.mirror) / "squad" / "dev-v1.1.json"))
    qas = [(p["context"], q) for art in squad["data"] for p in art["paragraphs"] for q in p["qas"]]
    ctx = [c for c, _ in qas]
    with open(work / "paragraph_pairs.jsonl", "w") as f:
        for i, c in enumerate(ctx):
            f.write(json.dumps({"prediction": c, "references": [ctx[(i + 1) % len(ctx)]]}) + "\n")
    # Exact match: every third prediction is the next question's answer (a miss), the rest the
    # question's own first answer with its case and punctuation changed (hits after normalising).
    with open(work / "em_pairs.jsonl", "w") as f:
        for i, (_, q) in enumerate(qas):
            answers = [x["text"] for x in q["answers"]]
            if i % 3 == 0:
                pred = qas[(i + 1) % len(qas)][1]["answers"][0]["text"]
            else:
                pred = "The " + answers[0].upper() + "."
            f.write(json.dumps({"prediction": pred, "references": answers}) + "\n")
    with open(work / "bertscore_pairs.jsonl", "w") as f:
        for i in range(512):
            f.write(json.dumps({"candidate": qas[i][1]["question"], "reference": qas[i + 1][1]["question"]}) + "\n")
    rng = np.random.RandomState(0)
    # Integers (exact in JSON on both sides, so the ties are the same ties): 50 levels of x, noisy y.
    x = rng.randint(0, 50, 1000)
    y = x * 10 + rng.randint(-200, 200, 1000)
    json.dump({"x": x.tolist(), "y": y.tolist()}, open(work / "kendall.json", "w"))
    # Training batches: SmolLM2 (causal LM, labels = inputs) 4 x 344; BERT2BERT 8 x 256 -> 16.
    ids = rng.randint(1000, 40000, (4, 344))
    json.dump({"input_ids": ids.tolist(), "labels": ids.tolist()}, open(work / "train_smollm2.json", "w"))
    # The same tokens as instruction tuning trains on them (the laptop Table 2's shape): a 320-token
    # prompt labelled -100, then 24 target tokens.
    sft = ids.copy()
    sft[:, :320] = -100
    json.dump({"input_ids": ids.tolist(), "labels": sft.tolist()}, open(work / "train_smollm2sft.json", "w"))
    json.dump({"input_ids": rng.randint(1000, 30000, (8, 256)).tolist(),
               "labels": rng.randint(1000, 30000, (8, 16)).tolist()}, open(work / "train_bert2bert.json", "w"))
    print(f"side_by_side: inputs in {work} ({len(ctx)} paragraph pairs)", file=sys.stderr)


# ------------------------------------------------------------------------------------------------
# measure
# ------------------------------------------------------------------------------------------------

class Bench:
    def __init__(self, iters, only):
        self.iters, self.only, self.rows, self.checks = iters, only, [], {}

    def wanted(self, key):
        return self.only is None or any(o in key for o in self.only.split(","))

    def wanted_any(self, keys):
        return any(self.wanted(k) for k in keys)

    def time(self, key, work, unit, fn):
        if not self.wanted(key):
            return None
        last = fn()
        times = []
        for _ in range(self.iters):
            t0 = time.perf_counter()
            last = fn()
            times.append(time.perf_counter() - t0)
        times.sort()
        med = times[len(times) // 2]
        print(f"side_by_side: {key}: {med:.4f} s ({work / med:.1f} {unit}/s)", file=sys.stderr)
        self.rows.append({"id": key, "seconds": med, "work": work, "unit": unit, "runs": times})
        return last


def read_jsonl(path):
    return [json.loads(l) for l in open(path)]


def squad_normalize(s):
    """The official SQuAD v1.1 evaluation script's answer normalisation."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def measure_metrics(b, work):
    from sacrebleu.metrics import CHRF
    import scipy.stats

    pairs = read_jsonl(work / "paragraph_pairs.jsonl")
    hyps = [r["prediction"] for r in pairs]
    refs = [[r["references"][0] for r in pairs]]
    s = b.time("chrf.corpus", len(hyps), "pairs", lambda: CHRF(word_order=2).corpus_score(hyps, refs).score)
    if s is not None:
        b.checks["chrf.corpus"] = s
    em = read_jsonl(work / "em_pairs.jsonl")

    def exact():
        hits = sum(max(squad_normalize(r["prediction"]) == squad_normalize(g) for g in r["references"]) for r in em)
        return hits / len(em)  # a fraction, as the Rust side's

    v = b.time("em.corpus", len(em), "pairs", exact)
    if v is not None:
        b.checks["em.corpus"] = v
    k = json.load(open(work / "kendall.json"))
    r = b.time("kendall.n1000", 1.0, "samples", lambda: scipy.stats.kendalltau(k["x"], k["y"]))
    if r is not None:
        b.checks["kendall.n1000"] = [float(r.statistic), float(r.pvalue)]


def measure_bm25(b, work):
    import numpy as np
    import rank_bm25

    if not b.wanted_any(["bm25.build", "bm25.query"]):
        return
    data = json.load(open(work / "bm25_corpus.json"))
    docs, queries = data["docs"], data["queries"]
    index = b.time("bm25.build", len(docs), "documents", lambda: rank_bm25.BM25Okapi(docs, k1=1.2, b=0.75))

    def query_all():
        return [np.argsort(-index.get_scores(q), kind="stable")[:5].tolist() for q in queries]

    tops = b.time("bm25.query", len(queries), "queries", query_all)
    if tops is not None:
        b.checks["bm25.top5"] = tops


def autocast(kind):
    import contextlib
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16) if kind == "bf16" else contextlib.nullcontext()


def measure_encoders(b, work, models, rust_checks):
    import torch

    minilm = models / "all-MiniLM-L6-v2"
    if b.wanted_any(["minilm.embed64.f32", "minilm.embed64.bf16"]):
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(minilm), device="cpu")
        texts = [f"Sentence number {i} talks about the river that runs through the old city near the station." for i in range(64)]
        for kind in ("f32", "bf16"):
            def enc():
                with torch.no_grad(), autocast(kind):
                    return st.encode(texts, batch_size=64, convert_to_tensor=True)
            e = b.time(f"minilm.embed64.{kind}", 64, "sentences", enc)
            if e is not None:
                b.checks[f"minilm.embed64.{kind}"] = e[0, :8].float().tolist()
    if b.wanted("bertscore.pairs"):
        from bert_score import BERTScorer

        pairs = read_jsonl(work / "bertscore_pairs.jsonl")
        cands, refs = [r["candidate"] for r in pairs], [r["reference"] for r in pairs]
        layer = int(rust_checks["bertscore.layer"])  # the registry's layer, as the Rust side used
        scorer = BERTScorer(model_type=str(minilm), num_layers=layer, batch_size=64)
        res = b.time("bertscore.pairs", len(cands), "pairs", lambda: scorer.score(cands, refs))
        if res is not None:
            b.checks["bertscore.pairs"] = float(res[2].mean())
            b.checks["bertscore.layer"] = layer


def measure_decoding(b, models, threads):
    import torch
    import transformers as tf

    gdir = models / "SmolLM2-135M-Instruct-Q4_1"
    if b.wanted_any(["decode.b1.f32", "decode.b16.f32"]):
        tok = tf.AutoTokenizer.from_pretrained(gdir, gguf_file=GGUF)
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        lm = tf.AutoModelForCausalLM.from_pretrained(gdir, gguf_file=GGUF, dtype=torch.float32).eval()
        for batch in (1, 16):
            key = f"decode.b{batch}.f32"
            if not b.wanted(key):
                continue
            enc = tok([DECODE_PROMPT] * batch, return_tensors="pt")

            @torch.no_grad()
            def gen():
                return lm.generate(**enc, max_new_tokens=DECODE_TOKENS, do_sample=False, pad_token_id=tok.pad_token_id)

            out = gen()
            new = out[:, enc["input_ids"].shape[1]:]
            produced = int((new != tok.pad_token_id).sum())
            out = b.time(key, produced, "tokens", gen)
            if out is not None:
                b.checks[key] = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    if b.wanted("decode.b1.llamacpp"):
        import llama_cpp

        llm = llama_cpp.Llama(model_path=str(gdir / GGUF), n_threads=threads, n_threads_batch=threads,
                              n_ctx=512, verbose=False)
        produced = {}

        def gen():
            llm.reset()  # no prompt reuse between runs: every run pays its prefill, as ours does
            r = llm.create_completion(DECODE_PROMPT, max_tokens=DECODE_TOKENS, temperature=0.0)
            produced["n"] = r["usage"]["completion_tokens"]
            return r["choices"][0]["text"]

        gen()
        text = b.time("decode.b1.llamacpp", produced["n"], "tokens", gen)
        b.checks["decode.b1.llamacpp"] = text
        b.checks["llama_cpp_version"] = llama_cpp.__version__


def measure_training(b, work, models):
    import torch
    import transformers as tf
    from torch.utils.flop_counter import FlopCounterMode

    for name in ("bert2bert", "smollm2", "smollm2sft"):
        if not b.wanted_any([f"train.{name}.f32", f"train.{name}.bf16"]):
            continue
        batch = json.load(open(work / f"train_{name}.json"))
        ids = torch.tensor(batch["input_ids"])
        labels = torch.tensor(batch["labels"])
        mask = torch.ones_like(ids)
        tokens = ids.numel() + (0 if name.startswith("smollm2") else labels.numel())
        for kind in ("f32", "bf16"):
            key = f"train.{name}.{kind}"
            if not b.wanted(key):
                continue
            torch.manual_seed(0)
            if name.startswith("smollm2"):
                model = tf.AutoModelForCausalLM.from_pretrained(models / "SmolLM2-135M-Instruct-Q4_1", gguf_file=GGUF, dtype=torch.float32)
            else:
                minilm = str(models / "all-MiniLM-L6-v2")
                model = tf.EncoderDecoderModel.from_encoder_decoder_pretrained(minilm, minilm)
                t = tf.AutoTokenizer.from_pretrained(minilm)
                model.config.decoder_start_token_id = t.cls_token_id
                model.config.pad_token_id = t.pad_token_id
            model.train()
            opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
            losses = []

            def step():
                with autocast(kind):
                    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                losses.append(float(loss))

            if kind == "f32" and name != "smollm2sft":
                # The step's arithmetic, counted once (matmuls and attention, forward + backward).
                with FlopCounterMode(display=False) as fc:
                    with autocast(kind):
                        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
                    loss.backward()
                model.zero_grad()
                b.checks[f"train.{name}.gflop"] = fc.get_total_flops() / 1e9
            b.time(key, tokens, "tokens", step)
            b.checks[key] = losses


def measure_roofs(b):
    import torch

    for kind, dtype in (("f32", torch.float32), ("bf16", torch.bfloat16)):
        x, y = torch.randn(ROOF_N, ROOF_N).to(dtype), torch.randn(ROOF_N, ROOF_N).to(dtype)
        b.time(f"roof.matmul{ROOF_N}.{kind}", 2 * ROOF_N**3 / 1e9, "GFLOP", lambda: x @ y)


def measure_gemv(b):
    """Batch-1 decoding is matrix-vector products over every weight: libtorch's kernels for the
    precisions a tch model could store its weights in, at SmolLM2's MLP and LM-head shapes."""
    import torch
    import torch.nn.functional as F

    for rows, cols, name in ((1536, 576, "mlp"), (49152, 576, "lm_head")):
        w, x = torch.randn(rows, cols), torch.randn(1, cols)
        mb = rows * cols / 1e6  # million weights: MB at one byte each
        scale = w.abs().amax(1) / 127
        w8 = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        g = 32
        wg = w.view(rows, -1, g)
        lo, hi = wg.amin(-1), wg.amax(-1)
        sc = ((hi - lo) / 15).clamp(min=1e-6)
        q = torch.round((wg - lo[..., None]) / sc[..., None]).clamp(0, 15).to(torch.int32).view(rows, -1)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        zeros = torch.stack([sc.t(), (lo + sc * 8).t()], -1).contiguous()
        wb, xb = w.bfloat16(), x.bfloat16()
        kernels = {
            "f32": (4, lambda: F.linear(x, w)),
            "bf16": (2, lambda: F.linear(xb, wb)),
            "int8": (1, lambda: torch.ops.aten._weight_int8pack_mm(x, w8, scale)),
            "int4": (0.5, lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, g, zeros)),
        }
        for kind, (bytes_per, fn) in kernels.items():
            def many(fn=fn):
                for _ in range(20):
                    fn()
            b.time(f"gemv.{name}.{kind}", 20 * mb * bytes_per / 1e3, "GB", many)


SACRE = r"""
import json, sys
from sacrebleu.metrics import CHRF
rows = [json.loads(l) for l in open(sys.argv[1])]
print(CHRF(word_order=2).corpus_score([r["prediction"] for r in rows], [[r["references"][0] for r in rows]]).score)
"""


def measure_commands(b, work, p2m):
    """chrF++ as whole commands: process start to exit, imports and file reading included. The
    same work on every side: the corpus score alone (`--resamples 0`: sacrebleu's command draws no
    interval either). `p2m-score` links no libtorch; `p2m score` does (it also has BERTScore)."""
    keys = ["command.chrf.p2m-score", "command.chrf.p2m", "command.chrf.sacrebleu"]
    if not b.wanted_any(keys):
        return
    p2m_score = str(pathlib.Path(p2m).with_name("p2m-score"))
    pairs = str(work / "paragraph_pairs.jsonl")
    ours = ["-p", pairs, "-m", "chrf++", "--resamples", "0", "--json"]
    out = {}
    for key, cmd in (("command.chrf.p2m-score", [p2m_score, *ours]),
                     ("command.chrf.p2m", [p2m, "score", *ours]),
                     ("command.chrf.sacrebleu", [sys.executable, "-c", SACRE, pairs])):
        def run():
            return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        out[key] = b.time(key, 1, "commands", run)
    b.checks["command.chrf"] = [json.loads(out["command.chrf.p2m-score"])["scores"][0]["value"],
                                json.loads(out["command.chrf.p2m"])["scores"][0]["value"],
                                float(out["command.chrf.sacrebleu"])]
    for name, binary in (("p2m", p2m), ("p2m-score", p2m_score)):
        start = time.perf_counter()
        subprocess.run([binary, "--version"], check=True, capture_output=True)
        b.checks[f"command.{name}_startup_s"] = time.perf_counter() - start
    b.checks["command.p2m-score_ldd"] = subprocess.run(["ldd", p2m_score], check=True, capture_output=True, text=True).stdout


def versions():
    from importlib.metadata import version, PackageNotFoundError

    out = {}
    for pkg in ("torch", "transformers", "sentence-transformers", "bert-score", "sacrebleu", "scipy", "rank-bm25", "llama-cpp-python"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def measure(a):
    import torch

    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(threads)
    work = pathlib.Path(a.work)
    models = pathlib.Path(a.cache) / "models"
    b = Bench(1 if a.quick else 3, a.only)
    measure_metrics(b, work)
    measure_bm25(b, work)
    measure_commands(b, work, a.p2m)
    rust_checks = json.load(open(a.rust))["checks"] if a.rust else {}
    measure_encoders(b, work, models, rust_checks)
    measure_decoding(b, models, threads)
    measure_training(b, work, models)
    measure_roofs(b)
    measure_gemv(b)
    out = {"side": "reference", "conditions": {"threads": torch.get_num_threads(), "versions": versions(),
                                                "cpu_capability": torch.backends.cpu.get_cpu_capability(), "runs": b.iters},
           "rows": b.rows, "checks": b.checks}
    tmp = pathlib.Path(a.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=2))
    tmp.rename(a.out)


# ------------------------------------------------------------------------------------------------
# predict: `p2m predict` three ways against transformers `generate` and llama-cpp-python's server
# ------------------------------------------------------------------------------------------------

# The students the laptop live Table 1 trains (SmolLM2-135M fine-tuned on 64 rows), overridable.
PREDICT_TASKS = {
    "temporal": ("P2M_PREDICT_TEMPORAL_MODEL", "runs/table1/laptop/recorded/temporal-no-model-retrieval/model",
                 "temporal-no-model-retrieval"),
    "squad": ("P2M_PREDICT_SQUAD_MODEL", "runs/table1/laptop/recorded/squad-no-model-retrieval/model",
              "squad-no-model-retrieval"),
}
# (column, p2m predict flags): the plain path, the prefix cache (the default), llama.cpp in process.
P2M_COLUMNS = [("p2m-plain", ["--no-prefix-cache"]), ("p2m-prefix", []), ("p2m-llama-cpp", ["--engine", "llama-cpp"])]
PREDICT_COLUMNS = [c for c, _ in P2M_COLUMNS] + ["transformers", "llama-cpp-server"]
# The model_input template of src/trainer (`model_input`): what a packaged model's p2m.json names.
TEMPLATE = "<task {task_id}>{instruction}\nExample:\n{input}\nLabel:\n"


def predict_inputs(task, mirror, n):
    """(input, reference) rows: Temporal's real test set in file order, or SQuAD v1.1 dev
    questions drawn with seed 0, in the loaders' layout (`Question: {q} Context: {c}`)."""
    import random

    if task == "temporal":
        rows = [(r[0], r[1]) for r in json.load(open(mirror / "temporal" / "temporal.json"))]
        return rows[:n]
    squad = json.load(open(mirror / "squad" / "dev-v1.1.json"))
    rows = [(f"Question: {q['question']} Context: {p['context']}", q["answers"][0]["text"])
            for art in squad["data"] for p in art["paragraphs"] for q in p["qas"]]
    return [rows[i] for i in random.Random(0).sample(range(len(rows)), 1000)[:n]]


def student_dir(task, cache):
    var, rel, cell = PREDICT_TASKS[task]
    path = pathlib.Path(os.environ.get(var) or pathlib.Path(cache) / rel)
    if not (path / "p2m.json").is_file():
        sys.exit(f"side_by_side: predict: no packaged student at {path} (no p2m.json). Make it with "
                 f"`cargo run --release --bin table1 -- --source live --cell {cell}` (laptop scale), "
                 f"or point {var} at a model folder `p2m run` packaged")
    return path


def student_settings(model):
    """The instruction and the executor settings a packaged model's evaluation used (p2m.json)."""
    m = json.load(open(model / "p2m.json"))
    if m.get("template", TEMPLATE) != TEMPLATE:
        sys.exit(f"side_by_side: predict: {model}/p2m.json has template {m['template']!r}, not the "
                 f"executor's {TEMPLATE!r}: update TEMPLATE in benches/side_by_side.py")
    ex = {"max_new_tokens": 64, "repetition_penalty": 2.0, "batch_size": 16, "max_source_len": 512, "task_id": 0}
    ex.update(m.get("executor", {}))
    if m.get("executor", {}).get("engine", "libtorch") != "libtorch" or "precision" in m.get("executor", {}):
        sys.exit(f"side_by_side: predict: {model}/p2m.json sets an engine or precision; the bench "
                 "compares the f32 libtorch student's settings")
    return m["instruction"], ex


def engine_gguf(model, cache):
    """The f16 GGUF `p2m predict --engine llama-cpp` writes (src/export `engine_gguf`): named by
    the sha256 of the writer's format and the student's config, weights and tokenizer."""
    import hashlib

    parts = ["p2m-student-gguf/1 f16"]
    for f in sorted(p for p in model.iterdir() if p.name in ("config.json", "tokenizer.json") or p.name.endswith(".safetensors")):
        parts.append(f"{f.name} {hashlib.sha256(f.read_bytes()).hexdigest()}")
    key = hashlib.sha256("\n".join(parts).encode()).hexdigest()
    return pathlib.Path(cache) / "student-gguf" / f"{key[:32]}.f16.gguf"


def run_p2m(p2m, args, env):
    start = time.perf_counter()
    done = subprocess.run([p2m, "predict", *args], capture_output=True, text=True, env=env)
    took = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"side_by_side: predict: `{p2m} predict {' '.join(args)}` failed:\n{done.stderr}")
    return took


def time_p2m(p2m, model, files, flags, ex, env):
    """Whole `p2m predict` commands: on one example (start-up, model load, one prediction: twice,
    the faster kept; the first also writes llama.cpp's GGUF once), on all n, and on all n with one
    new token (prompt processing + the first token). The n examples' time is all-n minus one; the
    prefill share is the one-token run minus one, and decode the rest."""
    one, inputs, out, work = files
    common = ["--model", str(model), "--cpu", *flags]
    t1 = min(run_p2m(p2m, [*common, "--input", str(one), "--out", str(work / "one.jsonl")], env) for _ in range(2))
    tn = run_p2m(p2m, [*common, "--input", str(inputs), "--out", str(out)], env)
    tp = run_p2m(p2m, [*common, "--input", str(inputs), "--out", str(work / "first-token.jsonl"), "--max-new-tokens", "1"], env)
    preds = [json.loads(l)["prediction"] for l in open(out)]
    return {"seconds": tn - t1, "one_example_s": t1, "all_s": tn, "prefill_s": max(tp - t1, 0.0),
            "split": "runs with 1 new token", "timing": "whole commands: all n minus one example"}, preds


def hf_batches(tok, prompts, ex):
    """Token ids as the executor builds them: the tokenizer's own specials, cut from the left to
    max_source_len, batches of batch_size longest first, left-padded."""
    import torch

    ids = [tok(p)["input_ids"][-ex["max_source_len"]:] for p in prompts]
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    batches = []
    for s in range(0, len(order), ex["batch_size"]):
        chunk = order[s:s + ex["batch_size"]]
        width = max(len(ids[i]) for i in chunk)
        rows = [[pad] * (width - len(ids[i])) + ids[i] for i in chunk]
        mask = [[0] * (width - len(ids[i])) + [1] * len(ids[i]) for i in chunk]
        batches.append((chunk, torch.tensor(rows), torch.tensor(mask)))
    return ids, batches, pad


def time_transformers(model, tok, prompts, ex):
    """transformers `generate`, batched greedy, the same settings and batches as the executor."""
    import torch
    import transformers as tf

    lm = tf.AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    _, batches, pad = hf_batches(tok, prompts, ex)

    @torch.no_grad()
    def run(new_tokens, batches=batches):
        out = [""] * len(prompts)
        start = time.perf_counter()
        for chunk, x, mask in batches:
            g = lm.generate(input_ids=x, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                            repetition_penalty=ex["repetition_penalty"], pad_token_id=pad)
            for row, i in enumerate(chunk):
                out[i] = tok.decode(g[row, x.shape[1]:], skip_special_tokens=True).strip()
        return time.perf_counter() - start, out

    run(1, batches[:1])  # warm-up
    prefill, _ = run(1)
    seconds, preds = run(ex["max_new_tokens"])
    return {"seconds": seconds, "prefill_s": prefill, "split": "a pass with 1 new token",
            "timing": "in process, model loaded"}, preds


def serve_llama(llama_python, gguf, threads, port, n_ctx):
    """llama-cpp-python's OpenAI server on the student's f16 GGUF (as scripts/llama-server.sh
    starts it), ready to answer."""
    import urllib.request

    cmd = [llama_python, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "student",
           "--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx", str(n_ctx),
           "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        if server.poll() is not None:
            sys.exit(f"side_by_side: predict: the llama-cpp-python server exited ({' '.join(cmd)})")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1)
            return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    sys.exit("side_by_side: predict: the llama-cpp-python server did not answer in 5 minutes")


def time_llama_server(llama_python, gguf, tok, ids, ex, threads):
    """The same prompts one after another through /v1/completions, greedy (temperature 0), the
    same penalty and cap. `cache_prompt` is the C++ llama-server's field; llama-cpp-python's
    server ignores it and keeps the previous request's keys and values itself, reusing the
    longest common token prefix (here the instruction) for the next prompt. Prompts cut to
    max_source_len are sent as the text of the kept tokens."""
    import socket
    import urllib.request

    texts = [tok.decode(i) for i in ids]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = serve_llama(llama_python, gguf, threads, port, max(2048, max(map(len, ids)) + ex["max_new_tokens"] + 16))
    try:
        def ask(text, new_tokens):
            body = {"prompt": text, "max_tokens": new_tokens, "temperature": 0.0, "repeat_penalty": ex["repetition_penalty"],
                    "cache_prompt": True}
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            return json.load(urllib.request.urlopen(req, timeout=600))

        def run(new_tokens):
            start = time.perf_counter()
            answers = [ask(t, new_tokens) for t in texts]
            return time.perf_counter() - start, answers

        ask(texts[0], 1)  # warm-up
        prefill, _ = run(1)
        seconds, answers = run(ex["max_new_tokens"])
    finally:
        server.terminate()
        server.wait()
    preds = [a["choices"][0]["text"].strip() for a in answers]
    counted = sum(a["usage"]["prompt_tokens"] != len(i) for a, i in zip(answers, ids))
    return {"seconds": seconds, "prefill_s": prefill, "split": "a pass with 1 new token",
            "timing": "HTTP requests, server loaded", "prompt_token_mismatches": counted}, preds


def predict_task(a, task, n, env):
    import transformers as tf

    model = student_dir(task, a.cache)
    instruction, ex = student_settings(model)
    work = pathlib.Path(a.work) / "predict" / task
    work.mkdir(parents=True, exist_ok=True)
    rows = predict_inputs(task, pathlib.Path(a.mirror), n)
    inputs, one = work / "inputs.jsonl", work / "one.jsonl"
    with open(inputs, "w") as f:
        f.writelines(json.dumps({"input": i, "output": o}) + "\n" for i, o in rows)
    one.write_text(json.dumps({"input": rows[0][0], "output": rows[0][1]}) + "\n")
    prompts = [TEMPLATE.format(task_id=ex["task_id"], instruction=instruction, input=i) for i, _ in rows]
    with open(work / "prompts.jsonl", "w") as f:
        f.writelines(json.dumps({"prompt": p}) + "\n" for p in prompts)
    res, preds = {}, {}
    for col, flags in P2M_COLUMNS:
        if b_wanted(a, f"predict.{task}.{col}") or col == "p2m-plain":
            print(f"side_by_side: predict.{task}.{col} ({len(rows)} examples)", file=sys.stderr)
            res[col], preds[col] = time_p2m(a.p2m, model, (one, inputs, work / f"{col}.jsonl", work), flags, ex, env)
    tok = tf.AutoTokenizer.from_pretrained(model)
    ids, _, _ = hf_batches(tok, prompts, ex)
    if b_wanted(a, f"predict.{task}.transformers"):
        print(f"side_by_side: predict.{task}.transformers", file=sys.stderr)
        res["transformers"], preds["transformers"] = time_transformers(model, tok, prompts, ex)
    if b_wanted(a, f"predict.{task}.llama-cpp-server"):
        gguf = engine_gguf(model, a.cache)
        if not gguf.is_file():
            run_p2m(a.p2m, ["--model", str(model), "--cpu", "--engine", "llama-cpp", "--input", str(one),
                            "--out", str(work / "one.jsonl")], env)
        if not gguf.is_file():
            sys.exit(f"side_by_side: predict: {gguf} missing after `p2m predict --engine llama-cpp`; "
                     f"write it with `p2m export` or check src/export engine_gguf's naming")
        print(f"side_by_side: predict.{task}.llama-cpp-server ({gguf.name})", file=sys.stderr)
        res["llama-cpp-server"], preds["llama-cpp-server"] = time_llama_server(
            a.llama_python, gguf, tok, ids, ex, int(env["OMP_NUM_THREADS"]))
    for col, r in res.items():
        r["examples"] = len(rows) - 1 if r["timing"].startswith("whole commands") else len(rows)
        r["agree_with_plain"] = sum(p == q for p, q in zip(preds[col], preds["p2m-plain"]))
        r["n"] = len(rows)
        print(f"side_by_side: predict.{task}.{col}: {r['examples'] / r['seconds']:.2f} examples/s, "
              f"{r['agree_with_plain']}/{len(rows)} equal to the plain path's", file=sys.stderr)
    return {"model": str(model), "n": len(rows), "settings": ex, "columns": res,
            "samples": {col: p[:3] for col, p in preds.items()}}


def b_wanted(a, key):
    return a.only is None or any(o in key for o in a.only.split(","))


def predict(a):
    import torch

    if not any(b_wanted(a, f"predict.{t}.{c}") for t in PREDICT_TASKS for c in PREDICT_COLUMNS):
        return
    if a.check:  # before the rest of a run: a missing student stops it at once, not after it
        for t in PREDICT_TASKS:
            if any(b_wanted(a, f"predict.{t}.{c}") for c in PREDICT_COLUMNS):
                student_settings(student_dir(t, a.cache))
        return
    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(threads)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    n = {"temporal": 40, "squad": 40} if a.quick else {"temporal": 860, "squad": 1000}
    if a.n:
        n = {t: a.n for t in n}
    load = [open("/proc/loadavg").read().split()[:3]]
    tasks = {t: predict_task(a, t, n[t], env) for t in PREDICT_TASKS if any(b_wanted(a, f"predict.{t}.{c}") for c in PREDICT_COLUMNS)}
    load.append(open("/proc/loadavg").read().split()[:3])
    p2m = pathlib.Path(a.p2m).resolve()
    llama_version = subprocess.run([a.llama_python, "-c", "import llama_cpp; print(llama_cpp.__version__)"],
                                   capture_output=True, text=True).stdout.strip()
    out = {"conditions": {"threads": threads, "quick": a.quick, "load_start_end": load, "versions": versions(),
                          "llama-cpp-python": llama_version,
                          "p2m": f"{p2m} ({subprocess.run([str(p2m), '--version'], capture_output=True, text=True).stdout.strip()}, "
                                 f"built {datetime.datetime.fromtimestamp(p2m.stat().st_mtime).isoformat(timespec='minutes')})"},
           "tasks": tasks}
    tmp = pathlib.Path(a.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=2))
    tmp.rename(a.out)


def predict_table(path):
    """The prediction rows: examples/s per column, its ratio to the plain path, the prefill /
    decode split, and agreement with the plain path's predictions (exact strings)."""
    d = json.load(open(path))
    c = d["conditions"]
    out = ["", f"Prediction (`p2m predict` and the references on the same prompts; {c['threads']} thread(s); "
               f"load average {' '.join(c['load_start_end'][0])} at the start, {' '.join(c['load_start_end'][1])} at the end; "
               f"p2m {c['p2m']}; llama-cpp-python {c['llama-cpp-python']}"
               + ("; --quick" if c["quick"] else "") + "):", ""]
    label = {"p2m-plain": "p2m predict --no-prefix-cache (plain)", "p2m-prefix": "p2m predict (prefix cache)",
             "p2m-llama-cpp": "p2m predict --engine llama-cpp", "transformers": "transformers generate, batched",
             "llama-cpp-server": "llama-cpp-python server, one request at a time"}
    for task, t in d["tasks"].items():
        ex = t["settings"]
        out += [f"{task}: {t['n']} examples, batch {ex['batch_size']}, ≤ {ex['max_new_tokens']} new tokens, "
                f"penalty {ex['repetition_penalty']}, prompts cut to {ex['max_source_len']} tokens; student {t['model']}", "",
                "| column | examples/s | vs plain | prefill / decode (ms per example) | equal to plain | timing |", "|---|---:|---:|---|---:|---|"]
        cols = t["columns"]
        base = cols["p2m-plain"]["examples"] / cols["p2m-plain"]["seconds"]
        for col in PREDICT_COLUMNS:
            if col not in cols:
                continue
            r = cols[col]
            rate = r["examples"] / r["seconds"]
            pre = min(r["prefill_s"], r["seconds"])
            split = f"{1000 * pre / r['examples']:,.0f} / {1000 * (r['seconds'] - pre) / r['examples']:,.0f}"
            note = r["timing"] + (f"; {r['prompt_token_mismatches']} prompt(s) counted differently by the server"
                                  if r.get("prompt_token_mismatches") else "")
            out.append(f"| {label[col]} | {rate:.2f} | {rate / base:.2f}× | {split} | {r['agree_with_plain']}/{r['n']} | {note} |")
        out.append("")
    out.append("Prefill = the same work with 1 new token (prompt processing and the first token); decode = the rest. "
               "Whole commands: all n minus one example (start-up and the model's load taken out).")
    return out


# ------------------------------------------------------------------------------------------------
# table
# ------------------------------------------------------------------------------------------------

# (work, our measurement, the reference measurement, goal as a minimum ratio or None). The ratio is
# our rate over the reference's (work per second), so > 1 means we are faster; with the same work
# on both sides it is the reference's time over ours.
COMPARISONS = [
    ("chrF++, 10,570 SQuAD paragraph pairs, in process", "chrf.corpus", "chrf.corpus", None),
    ("chrF++, the same, whole command incl. start-up (p2m-score, no libtorch, vs python + sacrebleu)", "command.chrf.p2m-score", "command.chrf.sacrebleu", 30.0),
    ("chrF++, the same through `p2m score`, which loads libtorch (python + sacrebleu)", "command.chrf.p2m", "command.chrf.sacrebleu", None),
    ("exact match (SQuAD normalisation), 10,570 pairs", "em.corpus", "em.corpus", None),
    ("Kendall's τ-b + p-value, n = 1,000 with ties (scipy)", "kendall.n1000", "kendall.n1000", None),
    ("BM25 index build, 11,320 cards, pre-analysed (rank_bm25)", "bm25.build", "bm25.build", None),
    ("BM25 query: score all cards + top 5, 3 paper instructions (rank_bm25)", "bm25.query", "bm25.query", 50.0),
    ("MiniLM embeddings, 64 sentences, f32 (sentence-transformers)", "minilm.embed64.f32", "minilm.embed64.f32", None),
    ("MiniLM embeddings, 64 sentences, bf16 (vs sentence-transformers f32)", "minilm.embed64.bf16", "minilm.embed64.f32", None),
    ("BERTScore F1, 512 question pairs, MiniLM (bert_score)", "bertscore.pairs", "bertscore.pairs", None),
    ("SmolLM2 greedy 128 tokens, batch 1, f32 (transformers f32)", "decode.b1.f32", "decode.b1.f32", None),
    ("SmolLM2 greedy 128 tokens, batch 1, f32 (llama.cpp Q4_1)", "decode.b1.f32", "decode.b1.llamacpp", 0.67),
    ("SmolLM2 greedy 128 tokens, batch 1, bf16 weights (llama.cpp Q4_1)", "decode.b1.bf16", "decode.b1.llamacpp", 0.67),
    ("SmolLM2 greedy 128 tokens, batch 1, llama.cpp engine in process (llama.cpp Q4_1)", "decode.b1.llama-cpp", "decode.b1.llamacpp", 0.67),
    ("SmolLM2 greedy, batch 16, f32 (transformers f32)", "decode.b16.f32", "decode.b16.f32", None),
    ("SmolLM2 greedy, batch 16, f32: tokens/s vs llama.cpp batch 1", "decode.b16.f32", "decode.b1.llamacpp", 1.0),
    ("SmolLM2 greedy, batch 16, bf16 weights: tokens/s vs llama.cpp batch 1", "decode.b16.bf16", "decode.b1.llamacpp", 1.0),
    ("SmolLM2 greedy, batch 16, llama.cpp engine in process: tokens/s vs llama.cpp batch 1", "decode.b16.llama-cpp", "decode.b1.llamacpp", 1.0),
    ("train step SmolLM2-135M, 4 × 344 tokens, f32 (transformers + AdamW f32)", "train.smollm2.f32", "train.smollm2.f32", 1.5),
    ("train step SmolLM2-135M, bf16 autocast (transformers + AdamW f32)", "train.smollm2.bf16", "train.smollm2.f32", 1.5),
    ("train step SmolLM2-135M, bf16 autocast (transformers bf16 autocast)", "train.smollm2.bf16", "train.smollm2.bf16", 1.0),
    ("train step SmolLM2-135M, 4 × (320 prompt + 24 target tokens), loss on the targets, f32 (transformers + AdamW f32)", "train.smollm2sft.f32", "train.smollm2sft.f32", 1.5),
    ("train step SmolLM2-135M, the same, bf16 autocast (transformers + AdamW f32)", "train.smollm2sft.bf16", "train.smollm2sft.f32", 1.5),
    ("train step SmolLM2-135M, the same, bf16 autocast (transformers bf16 autocast)", "train.smollm2sft.bf16", "train.smollm2sft.bf16", 1.0),
    ("train step BERT2BERT MiniLM, 8 × 256 → 16, f32 (transformers + AdamW f32)", "train.bert2bert.f32", "train.bert2bert.f32", 1.5),
    ("train step BERT2BERT MiniLM, bf16 autocast (transformers + AdamW f32)", "train.bert2bert.bf16", "train.bert2bert.f32", 1.5),
    ("train step BERT2BERT MiniLM, bf16 autocast (transformers bf16 autocast)", "train.bert2bert.bf16", "train.bert2bert.bf16", 1.0),
    (f"matmul {ROOF_N}³ f32 (torch), the fp32 roof", f"roof.matmul{ROOF_N}.f32", f"roof.matmul{ROOF_N}.f32", None),
    (f"matmul {ROOF_N}³ bf16 (torch), the bf16 roof", f"roof.matmul{ROOF_N}.bf16", f"roof.matmul{ROOF_N}.bf16", None),
]


def fmt_time(row):
    s = row["seconds"]
    t = f"{s * 1000:.1f} ms" if s < 1 else f"{s:.2f} s"
    if row["unit"] in ("tokens", "sentences", "pairs", "GFLOP"):
        rate = row["work"] / s
        unit = "GFLOP" if row["unit"] == "GFLOP" else row["unit"]
        t += f" ({rate:,.0f} {unit}/s)" if rate >= 100 else f" ({rate:.1f} {unit}/s)"
    return t


def agreement(ours, ref):
    """The values both sides computed, compared (what makes the timings the same work)."""
    lines = []

    def close(key, tol):
        if key in ours and key in ref:
            x, y = ours[key], ref[key]
            xs, ys = (x, y) if isinstance(x, list) else ([x], [y])
            ok = all(abs(p - q) <= tol * max(1.0, abs(q)) for p, q in zip(xs, ys))
            show = lambda v: [float(f"{e:.6g}") for e in v[:3]] + (["…"] if len(v) > 3 else []) if isinstance(v, list) else round(v, 6)
            lines.append(f"{key}: ours {show(x)} vs reference {show(y)}: {'agree' if ok else 'DIFFER'} (tolerance {tol:g})")
    close("chrf.corpus", 1e-9)
    close("em.corpus", 1e-9)
    close("kendall.n1000", 1e-9)
    close("bertscore.pairs", 1e-4)
    close("minilm.embed64.f32", 1e-4)
    if "command.chrf" in ref:
        p, q, s = ref["command.chrf"]
        ok = abs(p - s) < 1e-6 and abs(q - s) < 1e-6
        lines.append(f"command.chrf: p2m-score {p:.4f}, p2m score {q:.4f} vs sacrebleu {s:.4f}: {'agree' if ok else 'DIFFER'}")
    if "command.p2m-score_ldd" in ref:
        linked = [lib for lib in ("libtorch", "libc10", "libgomp") if lib in ref["command.p2m-score_ldd"]]
        lines.append(f"p2m-score links {', '.join(linked) if linked else 'no libtorch, c10 or libgomp'} (ldd); "
                     f"start-up (--version) {ref['command.p2m-score_startup_s']:.3f} s vs p2m {ref['command.p2m_startup_s']:.3f} s")
    if "bm25.top5" in ours and "bm25.top5" in ref:
        lines.append(f"bm25.top5: {'identical' if ours['bm25.top5'] == ref['bm25.top5'] else 'DIFFER'}")
    if "decode.b1.llama-cpp" in ours and "decode.b1.llamacpp" in ref:
        same = ours["decode.b1.llama-cpp"].strip() == ref["decode.b1.llamacpp"].strip()
        lines.append(f"decode.b1.llama-cpp: greedy text {'identical to' if same else 'differs from'} llama-cpp-python's")
    for kind in ("f32", "bf16"):
        if f"decode.b1.{kind}" in ours and "decode.b1.f32" in ref:
            same = ours[f"decode.b1.{kind}"].strip() == ref["decode.b1.f32"].strip()
            lines.append(f"decode.b1.{kind}: greedy text {'identical to' if same else 'differs from'} transformers f32's")
    for name in ("smollm2", "smollm2sft", "bert2bert"):
        for kind in ("f32", "bf16"):
            key = f"train.{name}.{kind}"
            if key in ours and key in ref:
                note = " (the warm start draws the new cross-attention weights from each side's own generator)" if name == "bert2bert" else ""
                lines.append(f"{key}: first-step loss ours {ours[key][0]:.4f}, transformers {ref[key][0]:.4f}{note}")
    return lines


def short_commit(commit):
    """The first 12 hex digits, keeping build.rs's `-dirty` (a build of uncommitted code)."""
    return commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")


def table(a):
    if not (a.rust and a.python and pathlib.Path(a.rust).is_file() and pathlib.Path(a.python).is_file()):
        # A run of the predict section alone (`--only predict`).
        if not (a.predict and pathlib.Path(a.predict).is_file()):
            sys.exit("side_by_side: table needs RUST.json and PYTHON.json, or --predict FILE (no id of "
                     "the predict section matched --only?)")
        text = "\n".join(predict_table(a.predict)) + "\n"
        print(text)
        if a.markdown:
            pathlib.Path(a.markdown).write_text(text)
        return
    ours, ref = json.load(open(a.rust)), json.load(open(a.python))
    by = lambda d: {r["id"]: r for r in d["rows"]}
    o, r = by(ours), by(ref)
    # Whole-command rows are measured by the Python side for both programs.
    for k in ("command.chrf.p2m-score", "command.chrf.p2m"):
        if k in r:
            o[k] = r[k]
    load = open("/proc/loadavg").read().split()[:3]
    v = ref["conditions"]["versions"]
    out = [f"side_by_side.sh, {datetime.date.today().isoformat()}: {os.cpu_count()} cores, "
           f"{ours['conditions']['threads']} intra-op thread(s) on both sides, load average {' '.join(load)} at the end, "
           f"median of {ours['conditions']['runs']} run(s) after a warm-up; prompt2model-rs {short_commit(ours['conditions']['commit'])} "
           f"(libtorch {ours['conditions']['libtorch']}); " + ", ".join(f"{k} {x}" for k, x in v.items() if x) +
           f"; CPU capability {ref['conditions']['cpu_capability']}", "",
           "| work (reference) | prompt2model-rs | reference | ratio | goal |", "|---|---|---|---:|---|"]
    for label, ok, rk, goal in COMPARISONS:
        if ok not in o or rk not in r:
            continue
        ratio = (o[ok]["work"] / o[ok]["seconds"]) / (r[rk]["work"] / r[rk]["seconds"])
        g = "" if goal is None else (f"≥ {goal:g}× " + ("met" if ratio >= goal else "**not met**"))
        out.append(f"| {label} | {fmt_time(o[ok])} | {fmt_time(r[rk])} | {ratio:.2f}× | {g} |")
    roofs = {k: o[f"roof.matmul{ROOF_N}.{k}"]["work"] / o[f"roof.matmul{ROOF_N}.{k}"]["seconds"]
             for k in ("f32", "bf16") if f"roof.matmul{ROOF_N}.{k}" in o}
    lines = []
    for name in ("smollm2", "bert2bert"):
        gflop = ref["checks"].get(f"train.{name}.gflop")
        for kind in ("f32", "bf16"):
            key = f"train.{name}.{kind}"
            if gflop and key in o and kind in roofs:
                achieved = gflop / o[key]["seconds"]
                lines.append(f"- {key}: {gflop:,.0f} GFLOP per step (torch's FlopCounterMode) in {o[key]['seconds']:.2f} s "
                             f"= {achieved:,.0f} GFLOP/s = {100 * achieved / roofs[kind]:.0f} % of the {kind} matmul roof ({roofs[kind]:,.0f} GFLOP/s)")
    if lines:
        out += ["", "Fraction of the matmul roof reached by our training steps:", ""] + lines
    gemv = [row for row in ref["rows"] if row["id"].startswith("gemv.")]
    if gemv:
        out += ["", "Batch-1 decoding kernels in libtorch (torch, one weight matrix times one vector; "
                "GB/s = the weight's bytes in that precision over the time):", ""]
        out += [f"- {row['id']}: {row['seconds'] / 20 * 1e6:,.0f} µs per product, {row['work'] / row['seconds']:.1f} GB/s" for row in gemv]
    out += ["", "Same work on both sides (values each computed):", ""] + [f"- {l}" for l in agreement(ours["checks"], ref["checks"])]
    if a.predict and pathlib.Path(a.predict).is_file():
        out += predict_table(a.predict)
    text = "\n".join(out) + "\n"
    print(text)
    if a.markdown:
        pathlib.Path(a.markdown).write_text(text)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--work", required=True)
    p.add_argument("--mirror", default=os.environ.get("P2M_MIRROR", str(ROOT.parent / "shared" / "mirror")))
    m = sub.add_parser("measure")
    m.add_argument("--work", required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--cache", default=os.environ.get("P2M_CACHE", str(ROOT / ".cache")))
    m.add_argument("--p2m", default=str(ROOT / "target" / "release" / "p2m"))
    m.add_argument("--rust", help="the Rust side's JSON (for the BERTScore layer it used)")
    m.add_argument("--quick", action="store_true")
    m.add_argument("--only")
    r = sub.add_parser("predict")
    r.add_argument("--work", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--cache", default=os.environ.get("P2M_CACHE", str(ROOT / ".cache")))
    r.add_argument("--mirror", default=os.environ.get("P2M_MIRROR", str(ROOT.parent / "shared" / "mirror")))
    r.add_argument("--p2m", default=str(ROOT / "target" / "release" / "p2m"))
    r.add_argument("--llama-python", default=sys.executable, help="a Python with llama_cpp.server")
    r.add_argument("--quick", action="store_true", help="40 examples per task instead of 860 / 1,000")
    r.add_argument("--n", type=int, help="examples per task (overrides --quick)")
    r.add_argument("--only")
    r.add_argument("--check", action="store_true", help="only check that the students are there")
    t = sub.add_parser("table")
    t.add_argument("rust", nargs="?")
    t.add_argument("python", nargs="?")
    t.add_argument("--predict", help="the predict section's JSON (side_by_side.py predict)")
    t.add_argument("--markdown")
    a = ap.parse_args()
    {"prepare": prepare, "measure": measure, "predict": predict, "table": table}[a.cmd](a)


if __name__ == "__main__":
    main()
