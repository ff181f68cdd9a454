"""The PyTorch/transformers side of benches/models.rs, on the same machine and the same work.

Run (a Python with torch 2.11 + transformers; one intra-op thread, as the Rust bench):
    OMP_NUM_THREADS=1 python benches/side_by_side.py [--cache .cache]
Prints seconds per iteration and throughput for each benchmark as JSON.
"""
import argparse, json, pathlib, time

import torch
import transformers as tf


def timeit(fn, warmup=1, iters=5):
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters


def sentences(n):
    return [f"Sentence number {i} talks about the river that runs through the old city near the station." for i in range(n)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default=".cache")
    args = ap.parse_args()
    torch.set_num_threads(1)
    models = pathlib.Path(args.cache) / "models"
    minilm = models / "all-MiniLM-L6-v2"
    gguf_dir = models / "SmolLM2-135M-Instruct-Q4_1"
    out = {"torch": torch.__version__, "transformers": tf.__version__, "threads": torch.get_num_threads()}

    # Encoder: mean pooling + L2 normalisation, as sentence-transformers' all-MiniLM-L6-v2 pipeline.
    tok = tf.AutoTokenizer.from_pretrained(minilm)
    enc = tf.AutoModel.from_pretrained(minilm).eval()
    texts = sentences(64)

    @torch.no_grad()
    def embed():
        b = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        h = enc(**b).last_hidden_state
        m = b["attention_mask"].unsqueeze(-1).float()
        e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(e, dim=-1)

    s = timeit(embed)
    out["encoder/minilm_embed_64_sentences"] = {"s_per_iter": s, "sentences_per_s": 64 / s}

    # Generation: the same GGUF, dequantised by transformers, greedy, 32 new tokens, left padding.
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    gtok = tf.AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf)
    gtok.padding_side = "left"
    if gtok.pad_token is None:
        gtok.pad_token = gtok.eos_token
    lm = tf.AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf, torch_dtype=torch.float32).eval()
    for batch in (1, 16):
        prompts = [f"Once upon a time, in a village number {i}, there lived" for i in range(batch)]
        b = gtok(prompts, return_tensors="pt", padding=True)
        produced = {}

        @torch.no_grad()
        def gen():
            o = lm.generate(**b, max_new_tokens=32, do_sample=False, pad_token_id=gtok.pad_token_id)
            new = o[:, b["input_ids"].shape[1]:]
            produced["n"] = int((new != gtok.pad_token_id).sum())

        s = timeit(gen, iters=3)
        out[f"smollm2_generation/greedy_32_tokens_batch_{batch}"] = {"s_per_iter": s, "tokens_per_s": produced["n"] / s}

    # Training: one AdamW step of BERT2BERT warm-started from MiniLM, batch 8, 64 source / 16 target tokens.
    torch.manual_seed(0)
    model = tf.EncoderDecoderModel.from_encoder_decoder_pretrained(str(minilm), str(minilm))
    model.config.decoder_start_token_id = tok.cls_token_id
    model.config.pad_token_id = tok.pad_token_id
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    vocab = model.config.decoder.vocab_size
    # The HF Trainer's step: clip the gradient norm at 1.0, then AdamW (as the Rust trainer does).
    for src_len in (64, 256):
        ids = torch.randint(1000, vocab, (8, src_len))
        labels = torch.randint(1000, vocab, (8, 16))

        def step():
            loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()

        s = timeit(step, iters=3)
        out[f"training/bert2bert_adamw_step_batch8_src{src_len}_tgt16"] = {"s_per_iter": s, "examples_per_s": 8 / s}

    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    s = timeit(lambda: a @ b, warmup=2, iters=20)
    out["roof/matmul_f32_1024"] = {"s_per_iter": s, "gflops": 2 * n**3 / s / 1e9}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
