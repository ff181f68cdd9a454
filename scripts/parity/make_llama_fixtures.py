#!/usr/bin/env python3
"""Parity fixtures for the llama / GGUF / chat stack (src/models/{gguf,llama,chat}.rs).

Writes small files under tests/fixtures/parity/llama/ from the PyTorch reference (transformers
loading the same GGUF, which dequantises it to float32 with the `gguf` package):

  dequant.json       synthetic blocks of every supported ggml type + gguf.quants.dequantize output
                     (f32 bit patterns), and samples of real-file tensors (Q4_1, Q8_0, F32) before
                     and after transformers' q/k un-permutation
  tokenizer.json     ids (and decodes) of transformers' GGUF tokenizer for a set of strings
  logits.json        per prompt: top-5 at every position, top-50 + a strided vocab subset at the
                     last position
  logits_full.f32    full last-position logits of the first prompt (little-endian f32)
  greedy.json        chat template renderings, prompt ids and 20-token greedy generations, one at a
                     time and as one left-padded batch
  tiny-hf/           a random tiny LlamaForCausalLM (untied head, GQA) as config.json +
                     model.safetensors, with expected.json logits (unpadded and left-padded batch)

Run once with the reference venv (torch 2.11.0, transformers, gguf, safetensors):

    P2M_SMOLLM2_GGUF=/path/to/SmolLM2-135M-Instruct.Q4_1.gguf \
        /tmp/pyt/bin/python scripts/parity/make_llama_fixtures.py

Without the variable the GGUF is looked up where the weights registry caches it:
.cache/models/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf
"""

import copy
import json
import os
import struct
import sys
from pathlib import Path

import numpy as np
import torch

import gguf
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "fixtures" / "parity" / "llama"
DEFAULT_GGUF = REPO / ".cache" / "models" / "smollm2-135m-instruct-q4_1" / "SmolLM2-135M-Instruct.Q4_1.gguf"

torch.manual_seed(0)
torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))


def f32_bits(a: np.ndarray) -> list[int]:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).ravel().tolist()


def write_json(name: str, obj) -> None:
    path = OUT / name
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {path.relative_to(REPO)} ({path.stat().st_size} bytes)")


# ------------------------------------------------------------------------------------------------
# Dequantisation: synthetic blocks
# ------------------------------------------------------------------------------------------------

# (type, block elements, block bytes, byte offsets of f16 scale fields)
LAYOUTS = {
    Q.F32: (1, 4, []),
    Q.F16: (1, 2, []),
    Q.BF16: (1, 2, []),
    Q.Q4_0: (32, 18, [0]),
    Q.Q4_1: (32, 20, [0, 2]),
    Q.Q5_0: (32, 22, [0]),
    Q.Q5_1: (32, 24, [0, 2]),
    Q.Q8_0: (32, 34, [0]),
    Q.Q2_K: (256, 84, [80, 82]),
    Q.Q3_K: (256, 110, [108]),
    Q.Q4_K: (256, 144, [0, 2]),
    Q.Q5_K: (256, 176, [0, 2]),
    Q.Q6_K: (256, 210, [208]),
}


def synthetic_blocks(rng: np.random.Generator, qtype, n_blocks: int) -> bytes:
    """Random bytes, with every f16 scale replaced by a finite random value (so NaN/inf from
    random bit patterns do not hide layout errors), and plain float types drawn as floats."""
    block, size, scale_offsets = LAYOUTS[qtype]
    if qtype == Q.F32:
        return rng.standard_normal(n_blocks, dtype=np.float32).tobytes()
    if qtype == Q.F16:
        return rng.standard_normal(n_blocks).astype(np.float16).tobytes()
    if qtype == Q.BF16:
        x = rng.standard_normal(n_blocks).astype(np.float32).view(np.uint32)
        return (x >> 16).astype(np.uint16).tobytes()
    raw = bytearray(rng.integers(0, 256, size=n_blocks * size, dtype=np.uint8).tobytes())
    for b in range(n_blocks):
        for off in scale_offsets:
            v = np.float16(rng.uniform(-2.0, 2.0) * 10 ** rng.uniform(-3, 0))
            raw[b * size + off : b * size + off + 2] = v.tobytes()
    return bytes(raw)


def dequant_fixtures(reader: GGUFReader, model_sd: dict) -> dict:
    rng = np.random.default_rng(1234)
    synthetic = []
    for qtype, (block, size, _) in LAYOUTS.items():
        n_blocks = 3 if block > 1 else 48
        data = synthetic_blocks(rng, qtype, n_blocks)
        arr = np.frombuffer(data, dtype=np.uint8).reshape(1, -1)
        # gguf.quants.dequantize takes rows of raw bytes; the result is float32.
        deq = gguf.quants.dequantize(arr, qtype).astype(np.float32).ravel()
        assert deq.size == n_blocks * block, (qtype, deq.size)
        synthetic.append({"type": qtype.name, "type_id": int(qtype), "n": int(deq.size), "hex": data.hex(), "f32_bits": f32_bits(deq)})

    # Real tensors: raw GGUF layout (before any permutation) at strided flat indices, and the HF
    # parameter transformers loads (after the q/k un-permutation) at the same flat indices.
    real = []
    hf_names = {
        "blk.0.attn_q.weight": "model.layers.0.self_attn.q_proj.weight",
        "blk.0.attn_k.weight": "model.layers.0.self_attn.k_proj.weight",
        "blk.3.ffn_down.weight": "model.layers.3.mlp.down_proj.weight",
        "token_embd.weight": "model.embed_tokens.weight",
        "blk.0.attn_norm.weight": "model.layers.0.input_layernorm.weight",
    }
    tensors = {t.name: t for t in reader.tensors}
    for name, hf in hf_names.items():
        t = tensors[name]
        deq = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        flat = deq.ravel()
        idx = np.unique(np.concatenate([np.arange(0, min(64, flat.size)), np.linspace(0, flat.size - 1, 256).astype(np.int64)]))
        hf_flat = model_sd[hf].detach().to(torch.float32).numpy().ravel()
        real.append(
            {
                "name": name,
                "type": t.tensor_type.name,
                "shape": list(deq.shape),
                "indices": idx.tolist(),
                "gguf_f32_bits": f32_bits(flat[idx]),
                "hf_name": hf,
                "hf_f32_bits": f32_bits(hf_flat[idx]),
                # f64 sums of the whole tensor, to catch errors away from the samples
                "gguf_sum": float(flat.astype(np.float64).sum()),
                "gguf_sum_sq": float((flat.astype(np.float64) ** 2).sum()),
            }
        )
    return {"synthetic": synthetic, "real": real}


# ------------------------------------------------------------------------------------------------
# Tiny random HF llama
# ------------------------------------------------------------------------------------------------


def tiny_hf() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(7)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        # Non-trivial norm weights, so a missing or misplaced norm shows.
        for n, p in model.named_parameters():
            if "norm" in n:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    d = OUT / "tiny-hf"
    d.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(d, safe_serialization=True)
    for extra in ("generation_config.json",):
        (d / extra).unlink(missing_ok=True)
    # safetensors writes its file 0600; fixtures are read by whoever runs the tests.
    for f in d.iterdir():
        f.chmod(0o644)
    seqs = [[5, 17, 33, 2, 60, 9, 41], [11, 12, 13]]
    with torch.no_grad():
        single = [model(torch.tensor([s])).logits[0].float() for s in seqs]
        # Left-padded batch, positions from the mask as generate() computes them.
        width = max(map(len, seqs))
        ids = torch.tensor([[0] * (width - len(s)) + s for s in seqs])
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
        pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        batch = model(ids, attention_mask=mask, position_ids=pos).logits.float()
    expected = {
        "seqs": seqs,
        "logits": [x.tolist() for x in single],
        "batch_last_logits": [batch[i, -1].tolist() for i in range(len(seqs))],
    }
    (d / "expected.json").write_text(json.dumps(expected) + "\n")
    print(f"wrote {d.relative_to(REPO)}/ ({sum(f.stat().st_size for f in d.iterdir())} bytes)")


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------

TOKENIZER_STRINGS = [
    "Hello world",
    " leading space and trailing space ",
    "multiple   spaces\n\nnew lines\tand\ttabs  \n",
    "Unicode: café naïve façade — “quotes” … ½ µ",
    "日本語のテキストです。東京は大きい都市です。",
    "emoji 🤗👍🏽 and ZWJ 👩‍💻",
    "numbers 12345 and 3.14159, dates 2024-01-01, 1,000,000",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "code: def f(x):\n    return x**2  # comment\n",
    "don't won't I'll we've THEY'RE",
    "Ελληνικά и русский текст, עברית, العربية",
    "superscripts x ² y³, fullwidth ２０２４年１２月, Ⅻ ①",
    "",
]

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are a concise assistant. Answer in one sentence."},
        {"role": "user", "content": "Explain what a neural network is."},
    ],
    [
        {"role": "user", "content": "Translate to Japanese: Good morning!"},
        {"role": "assistant", "content": "おはようございます！"},
        {"role": "user", "content": "And 'good night'?"},
    ],
]

LOGIT_PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):\n    ",
    "東京は",
]


def main() -> None:
    path = Path(os.environ.get("P2M_SMOLLM2_GGUF", DEFAULT_GGUF))
    if not path.exists():
        sys.exit(f"GGUF not found at {path}: run `bash scripts/setup.sh` or set P2M_SMOLLM2_GGUF")
    OUT.mkdir(parents=True, exist_ok=True)

    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, gguf {getattr(gguf, '__version__', '?')}")
    reader = GGUFReader(path)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    assert model.config.tie_word_embeddings, "SmolLM2 GGUF has no output.weight: the head is tied"
    meta = {"torch": torch.__version__, "transformers": transformers.__version__, "gguf_file": path.name, "attn_implementation": model.config._attn_implementation}

    write_json("dequant.json", dequant_fixtures(reader, model.state_dict()))

    # transformers' GGUF tokenizer ignores `tokenizer.ggml.pre = "smollm"` and pre-tokenizes with
    # GPT-2's ByteLevel regex alone; SmolLM2's own tokenizer.json (and llama.cpp) first split every
    # digit (`Digits(individual_digits=True)`). `ids_original` is that pipeline, built with the
    # Python `tokenizers` on the same vocabulary and merges.
    from tokenizers import pre_tokenizers

    original = copy.deepcopy(tok.backend_tokenizer)
    original.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)]
    )
    toks = []
    for s in TOKENIZER_STRINGS:
        ids = tok(s, add_special_tokens=True)["input_ids"]
        toks.append(
            {
                "text": s,
                "ids": ids,
                "ids_original": original.encode(s, add_special_tokens=True).ids,
                "decoded": tok.decode(ids, skip_special_tokens=False),
                "decoded_skip_special": tok.decode(ids, skip_special_tokens=True),
            }
        )
    write_json("tokenizer.json", {"meta": meta, "cases": toks})

    logit_cases = []
    stride = 97
    with torch.no_grad():
        for i, text in enumerate(LOGIT_PROMPTS):
            ids = tok(text, add_special_tokens=False)["input_ids"]
            logits = model(torch.tensor([ids])).logits[0].float()
            last = logits[-1]
            top_all = torch.topk(logits, 5, dim=-1)
            top_last = torch.topk(last, 50)
            logit_cases.append(
                {
                    "text": text,
                    "ids": ids,
                    "top5_ids": top_all.indices.tolist(),
                    "top5_values": top_all.values.tolist(),
                    "last_top50_ids": top_last.indices.tolist(),
                    "last_top50_values": top_last.values.tolist(),
                    "last_stride": stride,
                    "last_strided_values": last[::stride].tolist(),
                }
            )
            if i == 0:
                (OUT / "logits_full.f32").write_bytes(struct.pack(f"<{last.numel()}f", *last.tolist()))
                print(f"wrote logits_full.f32 ({last.numel() * 4} bytes)")
    write_json("logits.json", {"meta": meta, "cases": logit_cases})

    gen_cases = []
    max_new = 20
    with torch.no_grad():
        prompts = []
        for messages in CHATS:
            text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            ids = tok(text, add_special_tokens=False)["input_ids"]
            prompts.append((messages, text, ids))
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long), do_sample=False, max_new_tokens=max_new, pad_token_id=tok.pad_token_id)
            new = out[0, len(ids) :].tolist()
            gen_cases.append({"messages": messages, "prompt_text": text, "prompt_ids": ids, "new_ids": new, "new_text": tok.decode(new, skip_special_tokens=True)})
        # The same prompts as one left-padded batch.
        width = max(len(p[2]) for p in prompts)
        pad = tok.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p[2])) + p[2] for p in prompts])
        mask = torch.tensor([[0] * (width - len(p[2])) + [1] * len(p[2]) for p in prompts])
        out = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new, pad_token_id=pad)
        batch_new = [row[width:].tolist() for row in out]
    write_json("greedy.json", {"meta": meta, "max_new_tokens": max_new, "eos_token_id": model.generation_config.eos_token_id, "pad_token_id": pad, "cases": gen_cases, "batch_new_ids": batch_new})

    tiny_hf()
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"total fixture size: {total} bytes")


if __name__ == "__main__":
    main()
