#!/usr/bin/env python3
"""Parity fixtures for the Rust seq2seq students (src/models/{t5,encoder_decoder,seq2seq}.rs).

Run once by a developer (outputs are committed under tests/fixtures/parity/):

    python scripts/parity/make_seq2seq_fixtures.py            # needs torch 2.11, transformers 5.x
    P2M_MINILM_DIR=/path/to/all-minilm-l6-v2 python scripts/parity/make_seq2seq_fixtures.py

No network: every model is built from a config with fixed seeds (torch.manual_seed); the MiniLM
fixture reads the local MiniLM copy (env P2M_MINILM_DIR, else <P2M_CACHE or repo/.cache>/models/
all-MiniLM-L6-v2/, which `bash scripts/setup.sh` / the weights registry fills) and is skipped with a
warning when absent.

What is written:
- t5-buckets.json  transformers' relative position buckets (both directions, two bucket settings)
- t5-tiny/       T5 v1.0 (relu FF, tied embeddings, output rescaled by d_model**-0.5)
- flan-t5-tiny/  T5 v1.1 / flan (gated-gelu FF, untied lm_head, 3 decoder vs 2 encoder layers)
    config.json, model.safetensors (HF names), expected.safetensors (encoder_hidden,
    decoder_logits), expected.json (inputs, labels, loss, greedy generations with
    repetition_penalty 1.0 and 2.0, max_new_tokens 12).
- bert2bert-tiny/ transformers EncoderDecoderModel(BertModel, BertLMHeadModel) warm-started with
    `from_encoder_decoder_pretrained` from a tiny random BERT:
    bert/{config.json, model.safetensors}  the initial BERT checkpoint (a plain BertModel, like MiniLM)
    new_weights.safetensors  the weights the BERT checkpoint lacks (cross-attention, LM head)
    expected.safetensors / expected.json  as above.
  The new weights are (re)initialised with the procedure documented in encoder_decoder.rs
  (LayerNorm.weight=1, *.bias=0, else seeded_normal(shape, initializer_range, seed, name): a
  SplitMix64/Box-Muller stream keyed by seed and parameter name, reimplemented below in numpy), so a
  Rust warm start with the same seed reproduces them; the Rust test nevertheless loads them from
  new_weights.safetensors for the output comparison, so that parity does not depend on the RNG.
- minilm/  (if MiniLM is available) plain BertModel hidden states of the real MiniLM on two
    tokenized sentences, and a BERT2BERT warm start from it: loss before and after one AdamW step
    (lr 5e-5, torch defaults betas (0.9, 0.999), eps 1e-8, weight_decay 0.01), dropout off.

To match transformers' reference numerics exactly, models use the eager attention implementation.
"""

import hashlib
import json
import os
import pathlib
import sys
import tempfile

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import DynamicCache, EncoderDecoderCache
from transformers import BertConfig, BertModel, EncoderDecoderModel, T5Config, T5ForConditionalGeneration
from transformers.utils import logging as hf_logging

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "parity"
MAX_NEW_TOKENS = 12
PENALTIES = [1.0, 2.0]

hf_logging.set_verbosity_error()
torch.set_num_threads(1)


def write_json(path, obj):
    path.write_text(json.dumps(obj, indent=1) + "\n")


def strip_generation(seq, eos):
    """HF returns [start, tokens..., pad...]: keep the generated tokens up to and including EOS."""
    out = []
    for t in seq[1:]:
        out.append(int(t))
        if int(t) == eos:
            break
    return out


def greedy(model, input_ids, attention_mask, eos, penalty):
    # An explicit, config-less cache: transformers 5.23 sizes the cache it makes itself from the
    # top-level config's layer count (T5: num_layers), which breaks T5 with more decoder than
    # encoder layers (IndexError in DynamicCache.update); a config-less cache grows per layer.
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    with torch.no_grad():
        seqs = model.generate(
            past_key_values=cache,
            input_ids=input_ids,
            attention_mask=attention_mask,
            do_sample=False,
            num_beams=1,
            max_new_tokens=MAX_NEW_TOKENS,
            repetition_penalty=penalty,
            eos_token_id=eos,
        )
    return [strip_generation(s.tolist(), eos) for s in seqs]


def pick_eos(runs, default):
    """An EOS id that ends row 0 early (after 2-5 tokens) in some run but appears in no other row of
    any run, so the fixture exercises per-row stopping while the other rows go on; the id is
    written into the fixture config. `runs`: the greedy generations with the default EOS, one
    list of rows per repetition penalty. Falls back to `default`."""
    others = {t for gens in runs for g in gens[1:] for t in g}
    for gens in reversed(runs):
        row0 = gens[0]
        for pos in (3, 4, 2, 5):
            if pos < len(row0):
                tok = row0[pos]
                if tok not in row0[:pos] and tok not in others:
                    return tok
    return default


def mask_of(ids, pad):
    return (ids != pad).long()


# --------------------------------------------------------------------------------------------------
# T5
# --------------------------------------------------------------------------------------------------


def make_t5(name, cfg, seed, input_ids, attention_mask, labels):
    out = FIXTURES / name
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(T5Config(**cfg)).eval()
    if not cfg["tie_word_embeddings"]:
        # transformers 5 builds T5 with lm_head tied to `shared` whatever the config says (it unties
        # only when a checkpoint has two different tensors), so give the head its own weights, drawn
        # like transformers' init (normal, std = initializer_factor).
        model.lm_head.weight = torch.nn.Parameter(torch.randn(cfg["vocab_size"], cfg["d_model"]) * cfg.get("initializer_factor", 1.0))
    state = model.state_dict()
    skip = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}
    if cfg["tie_word_embeddings"]:
        skip.add("lm_head.weight")
    save_file({k: v.contiguous() for k, v in state.items() if k not in skip}, str(out / "model.safetensors"), metadata={"format": "pt"})

    def load(eos):
        cfg["eos_token_id"] = eos
        write_json(out / "config.json", cfg)
        m = T5ForConditionalGeneration.from_pretrained(str(out), attn_implementation="eager").eval()
        untied = m.lm_head.weight.data_ptr() != m.shared.weight.data_ptr()
        assert untied == (not cfg["tie_word_embeddings"]), "transformers did not (un)tie the head as the config says"
        return m

    # Through transformers' own loader, so the files mean what transformers makes of them.
    model = load(cfg["eos_token_id"])
    eos = pick_eos([greedy(model, input_ids, attention_mask, cfg["eos_token_id"], p) for p in PENALTIES], cfg["eos_token_id"])
    model = load(eos)

    with torch.no_grad():
        enc = model.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        res = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    gens = {str(p): greedy(model, input_ids, attention_mask, eos, p) for p in PENALTIES}
    save_file({"encoder_hidden": enc.contiguous(), "decoder_logits": res.logits.contiguous()}, str(out / "expected.safetensors"))
    write_json(
        out / "expected.json",
        {
            "input_ids": input_ids.tolist(),
            "attention_mask": attention_mask.tolist(),
            "labels": labels.tolist(),
            "loss": res.loss.item(),
            "max_new_tokens": MAX_NEW_TOKENS,
            "greedy": gens,
            "seed": seed,
            "transformers": __import__("transformers").__version__,
            "torch": torch.__version__,
        },
    )
    print(f"{name}: loss {res.loss.item():.6f}, eos {eos}, greedy {gens}")


def t5_fixtures():
    # T5 v1.0: relu, tied. Small bucket count/distance so that the short inputs reach the
    # logarithmic buckets (bidirectional: 4 buckets per direction, exact below 2).
    t5 = dict(
        model_type="t5", vocab_size=512, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.1,
        layer_norm_epsilon=1e-6, initializer_factor=1.0, feed_forward_proj="relu", tie_word_embeddings=True,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, is_encoder_decoder=True,
    )
    ids = torch.tensor([[13, 57, 101, 7, 250, 33, 480, 1], [88, 9, 411, 1, 0, 0, 0, 0]])
    labels = torch.tensor([[44, 19, 300, 5, 1], [71, 23, 1, -100, -100]])
    make_t5("t5-tiny", t5, 1234, ids, mask_of(ids, 0), labels)

    # flan-T5 (v1.1): gated-gelu, untied head, more decoder than encoder layers, default buckets
    # (32/128) with 20-token inputs so that offsets >= 8 use the logarithmic buckets.
    flan = dict(
        model_type="t5", vocab_size=512, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3,
        num_heads=4, relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.1,
        layer_norm_epsilon=1e-6, initializer_factor=1.0, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, is_encoder_decoder=True,
    )
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(2, 512, (2, 20), generator=g)
    ids[0, -1] = 1
    ids[1, 14] = 1
    ids[1, 15:] = 0
    labels = torch.randint(2, 512, (2, 9), generator=g)
    labels[0, -1] = 1
    labels[1, 5] = 1
    labels[1, 6:] = -100
    make_t5("flan-t5-tiny", flan, 4321, ids, mask_of(ids, 0), labels)


def bucket_fixture():
    """transformers' relative position buckets for offsets -140..140 (beyond max_distance 128)."""
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = torch.arange(-140, 141)
    tables = []
    for bidirectional in (True, False):
        for buckets, distance in ((32, 128), (8, 16)):
            got = T5Attention._relative_position_bucket(rel, bidirectional=bidirectional, num_buckets=buckets, max_distance=distance)
            tables.append({"bidirectional": bidirectional, "num_buckets": buckets, "max_distance": distance, "buckets": got.tolist()})
    write_json(FIXTURES / "t5-buckets.json", {"offsets": rel.tolist(), "tables": tables})


# --------------------------------------------------------------------------------------------------
# BERT2BERT
# --------------------------------------------------------------------------------------------------

TIED_ALIASES = ("decoder.cls.predictions.decoder.weight", "decoder.cls.predictions.decoder.bias")


MASK64 = (1 << 64) - 1


def fnv1a64(data):
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & MASK64
    return h


def seeded_normal(shape, std, seed, name):
    """seq2seq.rs `seeded_normal`: SplitMix64 seeded with seed ^ fnv1a64(name) (the n-th output is
    mix(state + n * golden_gamma), so it vectorises), 53-bit uniforms, Box-Muller pairs
    (std * r * cos t, std * r * sin t) rounded to f32, row-major."""
    n = 1
    for d in shape:
        n *= d
    pairs = (n + 1) // 2
    with np.errstate(over="ignore"):
        state = np.uint64((seed ^ fnv1a64(name.encode())) & MASK64)
        z = state + np.arange(1, 2 * pairs + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    u1, u2 = u[0::2], u[1::2]
    r = np.sqrt(-2.0 * np.log(1.0 - u1))
    t = 2.0 * np.pi * u2
    out = np.empty(2 * pairs, dtype=np.float32)
    out[0::2] = (std * r * np.cos(t)).astype(np.float32)
    out[1::2] = (std * r * np.sin(t)).astype(np.float32)
    return torch.from_numpy(out[:n].copy()).view(*shape)


def reinit_new_weights(model, bert_keys, seed):
    """The documented init of encoder_decoder.rs for the weights the BERT checkpoint lacks.
    Returns their names (the Rust variable names: no pooler, no tied aliases)."""
    sd = model.state_dict(keep_vars=True)
    names = sorted(k for k in sd if not k.startswith("encoder.pooler.") and k not in TIED_ALIASES)

    def from_checkpoint(k):
        for prefix in ("encoder.", "decoder.bert.", "decoder."):
            if k.startswith(prefix):
                rest = k[len(prefix):]
                return rest in bert_keys or ("bert." + rest) in bert_keys
        return False

    new = [k for k in names if not from_checkpoint(k)]
    assert all(".crossattention." in k or k.startswith("decoder.cls.") for k in new), new
    std = model.config.decoder.initializer_range
    with torch.no_grad():
        for k in new:
            p = sd[k]
            if k.endswith("LayerNorm.weight"):
                p.fill_(1.0)
            elif k.endswith(".bias"):
                p.zero_()
            else:
                p.copy_(seeded_normal(tuple(p.shape), std, seed, k))
    return new, {k: sd[k].detach().clone().contiguous() for k in new}


def warm_start(bert_dir, tokens, seed):
    """transformers' own BERT2BERT warm start, then the documented init of the new weights."""
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(str(bert_dir), str(bert_dir))
    model.set_attn_implementation("eager")
    model.config.decoder_start_token_id = tokens["decoder_start"]
    model.config.pad_token_id = tokens["pad"]
    model.config.eos_token_id = tokens["eos"]
    model.generation_config.decoder_start_token_id = tokens["decoder_start"]
    model.generation_config.pad_token_id = tokens["pad"]
    model.generation_config.eos_token_id = tokens["eos"]
    bert = load_file(str(bert_dir / "model.safetensors"))
    # transformers loaded the BERT weights into both halves (separate copies).
    sd = model.state_dict()
    for k, v in bert.items():
        if k.startswith("pooler.") or k.endswith("position_ids"):
            continue
        assert torch.equal(sd["encoder." + k], v), k
        assert torch.equal(sd["decoder.bert." + k], v), k
    assert sd["encoder.embeddings.word_embeddings.weight"].data_ptr() != sd["decoder.bert.embeddings.word_embeddings.weight"].data_ptr()
    new, new_weights = reinit_new_weights(model, set(bert), seed)
    # The LM head's projection is tied to the decoder word embeddings, its bias to predictions.bias.
    assert sd["decoder.cls.predictions.decoder.weight"].data_ptr() == sd["decoder.bert.embeddings.word_embeddings.weight"].data_ptr()
    return model.eval(), new, new_weights


def bert2bert_fixture():
    out = FIXTURES / "bert2bert-tiny"
    bert_dir = out / "bert"
    bert_dir.mkdir(parents=True, exist_ok=True)
    cfg = BertConfig(
        vocab_size=512, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, max_position_embeddings=64,
        type_vocab_size=2, initializer_range=0.25, layer_norm_eps=1e-12, pad_token_id=0,
    )
    # initializer_range 0.25 rather than BERT's 0.02: with 0.02 the new cross-attention barely
    # moves a random decoder and every row generates the same tokens, which would make the
    # fixture blind to the encoder side of generation.
    torch.manual_seed(99)
    bert = BertModel(cfg).eval()
    # A plain BertModel checkpoint, as MiniLM's (with its pooler, which the warm start ignores).
    save_file({k: v.contiguous() for k, v in bert.state_dict().items()}, str(bert_dir / "model.safetensors"), metadata={"format": "pt"})
    bert_cfg = {k: v for k, v in cfg.to_dict().items() if k in (
        "model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
        "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
        "type_vocab_size", "initializer_range", "layer_norm_eps", "pad_token_id", "position_embedding_type")}
    bert_cfg.setdefault("position_embedding_type", "absolute")
    bert_cfg["architectures"] = ["BertModel"]
    write_json(bert_dir / "config.json", bert_cfg)

    seed = 2024
    tokens = {"decoder_start": 2, "eos": 3, "pad": 0}  # [CLS], [SEP], [PAD] of the tiny vocabulary
    ids = torch.tensor([[2, 45, 67, 300, 12, 88, 3], [2, 99, 401, 3, 0, 0, 0]])
    attn = mask_of(ids, 0)
    # Row 0 has a pad id (0) as a real label: EncoderDecoderModel masks pad keys in the decoder.
    labels = torch.tensor([[17, 230, 0, 41, 3], [88, 3, -100, -100, -100]])

    model, _, _ = warm_start(bert_dir, tokens, seed)
    tokens["eos"] = pick_eos([greedy(model, ids, attn, tokens["eos"], p) for p in PENALTIES], tokens["eos"])
    model, new, new_weights = warm_start(bert_dir, tokens, seed)
    save_file(new_weights, str(out / "new_weights.safetensors"))

    with torch.no_grad():
        enc = model.encoder(input_ids=ids, attention_mask=attn).last_hidden_state
        res = model(input_ids=ids, attention_mask=attn, labels=labels)
    gens = {str(p): greedy(model, ids, attn, tokens["eos"], p) for p in PENALTIES}
    save_file({"encoder_hidden": enc.contiguous(), "decoder_logits": res.logits.contiguous()}, str(out / "expected.safetensors"))
    write_json(
        out / "expected.json",
        {
            "special_tokens": tokens,
            "init_seed": seed,
            "new_parameters": new,
            "input_ids": ids.tolist(),
            "attention_mask": attn.tolist(),
            "labels": labels.tolist(),
            "loss": res.loss.item(),
            "max_new_tokens": MAX_NEW_TOKENS,
            "greedy": gens,
            "transformers": __import__("transformers").__version__,
            "torch": torch.__version__,
        },
    )
    print(f"bert2bert-tiny: loss {res.loss.item():.6f}, eos {tokens['eos']}, greedy {gens}")


# --------------------------------------------------------------------------------------------------
# MiniLM (real weights)
# --------------------------------------------------------------------------------------------------


def minilm_dir():
    """P2M_MINILM_DIR, else the weights registry's cache folder (as the Rust test looks it up)."""
    env = os.environ.get("P2M_MINILM_DIR")
    if env:
        return pathlib.Path(env)
    cache = pathlib.Path(os.environ.get("P2M_CACHE") or ROOT / ".cache") / "models"
    for name in ("all-MiniLM-L6-v2", "all-minilm-l6-v2"):
        if (cache / name / "model.safetensors").is_file():
            return cache / name
    return cache / "all-MiniLM-L6-v2"


def minilm_fixture():
    from tokenizers import Tokenizer

    src_dir = minilm_dir()
    if not (src_dir / "model.safetensors").is_file():
        print(f"WARNING: no MiniLM at {src_dir} (set P2M_MINILM_DIR or run `bash scripts/setup.sh`); minilm fixture not written", file=sys.stderr)
        return
    out = FIXTURES / "minilm"
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer.from_file(str(src_dir / "tokenizer.json"))
    # MiniLM's tokenizer.json pads every encoding to 128 tokens and truncates at 128; the fixture
    # pads to the batch's longest row itself.
    tok.no_padding()
    tok.no_truncation()
    tokens = {"decoder_start": tok.token_to_id("[CLS]"), "eos": tok.token_to_id("[SEP]"), "pad": tok.token_to_id("[PAD]")}
    sources = ["Translate to French: the cat sat on the mat.", "What is the capital of France?"]
    targets = ["le chat s'est assis sur le tapis.", "Paris"]

    def batch(texts, pad):
        enc = [tok.encode(t).ids for t in texts]
        n = max(map(len, enc))
        return enc, torch.tensor([e + [pad] * (n - len(e)) for e in enc]), torch.tensor([[1] * len(e) + [0] * (n - len(e)) for e in enc])

    src_ids, ids, attn = batch(sources, tokens["pad"])
    tgt_ids, labels, _ = batch(targets, -100)

    # The reference BERT forward: a plain BertModel of the same weights.
    bert = BertModel.from_pretrained(str(src_dir), attn_implementation="eager").eval()
    with torch.no_grad():
        hidden = bert(input_ids=ids, attention_mask=attn).last_hidden_state

    # The warm-started BERT2BERT twin (load a copy without the sentence-transformers extras).
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        for f in ("config.json", "model.safetensors"):
            (tmp / f).symlink_to(src_dir / f)
        seed = 1234
        model, new, new_weights = warm_start(tmp, tokens, seed)
    with torch.no_grad():
        enc = model.encoder(input_ids=ids, attention_mask=attn).last_hidden_state
    assert (enc - hidden).abs().max().item() < 1e-4

    # One AdamW step (dropout off: the model stays in eval mode; gradients are on).
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5)
    loss0 = model(input_ids=ids, attention_mask=attn, labels=labels).loss
    opt.zero_grad()
    loss0.backward()
    opt.step()
    with torch.no_grad():
        loss1 = model(input_ids=ids, attention_mask=attn, labels=labels).loss

    checks = {k: {"sum": v.double().sum().item(), "first": v.flatten()[:4].tolist()} for k, v in new_weights.items()}
    sha = hashlib.sha256((src_dir / "model.safetensors").read_bytes()).hexdigest()
    save_file({"bert_hidden": hidden.contiguous()}, str(out / "expected.safetensors"))
    write_json(
        out / "expected.json",
        {
            "model_safetensors_sha256": sha,
            "special_tokens": tokens,
            "sources": sources,
            "targets": targets,
            "source_ids": src_ids,
            "target_ids": tgt_ids,
            "input_ids": ids.tolist(),
            "attention_mask": attn.tolist(),
            "labels": labels.tolist(),
            "init_seed": seed,
            "new_parameters": new,
            "new_parameter_checks": checks,
            "lr": 5e-5,
            "loss_before": loss0.item(),
            "loss_after": loss1.item(),
            "transformers": __import__("transformers").__version__,
            "torch": torch.__version__,
        },
    )
    print(f"minilm: loss {loss0.item():.6f} -> {loss1.item():.6f} after one AdamW step")


if __name__ == "__main__":
    FIXTURES.mkdir(parents=True, exist_ok=True)
    bucket_fixture()
    t5_fixtures()
    bert2bert_fixture()
    minilm_fixture()
