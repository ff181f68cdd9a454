"""Fixtures for the torch.save reader (src/models/torch_pickle.rs) and the DataFinder encoder path.

Run with the reference environment (torch 2.11, transformers 5.x):
    /tmp/pyt/bin/python scripts/parity/make_torch_pickle_fixtures.py

Writes
  tests/fixtures/torch_pickle/state_dict.bin   torch.save of a state dict: f32, f16, i64, bool,
                                              a transposed (non-contiguous) view, a slice with a
                                              storage offset, two tensors sharing one storage
  tests/fixtures/torch_pickle/expected.json    every tensor's dtype, shape and values (flattened)
  tests/fixtures/datafinder_tiny/              a tiny random BERT as a 2022 hub repo ships it:
                                              config.json, pytorch_model.bin, vocab.txt,
                                              tokenizer_config.json (no tokenizer.json, no safetensors)
  tests/fixtures/datafinder_tiny/expected.json  token ids and BertModel(...).last_hidden_state[:, 0]
                                              (the tevatron DenseModel query embedding: CLS, no
                                              normalisation) of the fixture sentences
"""
import collections
import json
import os

import torch
from transformers import BertConfig, BertModel, BertTokenizer

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures")
torch.manual_seed(0)

# --- the pickle reader ------------------------------------------------------------------------
out = os.path.join(ROOT, "torch_pickle")
os.makedirs(out, exist_ok=True)
base = torch.arange(24, dtype=torch.float32).reshape(4, 6) / 7.0
shared = torch.randn(10)
sd = collections.OrderedDict()
sd["bert.embeddings.word_embeddings.weight"] = torch.randn(5, 3)
sd["half"] = torch.randn(2, 3).half()
sd["transposed"] = base.t()  # non-contiguous: stride (1, 6)
sd["offset_slice"] = base[1:3, 2:5]  # storage offset 8, stride (6, 1)
sd["shared_a"] = shared[:4]
sd["shared_b"] = shared[4:].view(2, 3)
sd["position_ids"] = torch.arange(7, dtype=torch.int64).unsqueeze(0)
sd["mask"] = torch.tensor([True, False, True])
sd["scalar"] = torch.tensor(3.5)
torch.save(sd, os.path.join(out, "state_dict.bin"))
expected = {
    name: {"dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape), "values": t.float().flatten().tolist()}
    for name, t in sd.items()
}
with open(os.path.join(out, "expected.json"), "w") as f:
    json.dump({"order": list(sd.keys()), "tensors": expected}, f, indent=1)

# --- a tiny DataFinder-like repo ----------------------------------------------------------------
out = os.path.join(ROOT, "datafinder_tiny")
os.makedirs(out, exist_ok=True)
words = ["answer", "question", "questions", "about", "a", "wikipedia", "passage", "dataset", "for",
         "translate", "english", "to", "german", "code", "python", "the", "of", "text", "span", "with"]
vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words + ["##s", "##ing", "##ed", ".", ",", "?"]
with open(os.path.join(out, "vocab.txt"), "w") as f:
    f.write("\n".join(vocab) + "\n")
with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
    json.dump({"do_lower_case": True, "model_max_length": 512, "tokenizer_class": "BertTokenizer"}, f)
config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=32, max_position_embeddings=160, type_vocab_size=2)
model = BertModel(config).eval()
config.save_pretrained(out)
# A 2022 checkpoint: pytorch_model.bin (tevatron's DenseModel saves the encoder's state dict).
torch.save(model.state_dict(), os.path.join(out, "pytorch_model.bin"))
tok = BertTokenizer(os.path.join(out, "vocab.txt"), do_lower_case=True)
sentences = ["Answer questions about a Wikipedia passage.", "Translate English to German, with PYTHON code?",
             "A dataset for " + "question " * 150]
cases = []
for s in sentences:
    enc = tok(s, return_tensors="pt", truncation=True, max_length=128)
    with torch.no_grad():
        cls = model(**enc).last_hidden_state[:, 0]
    cases.append({"text": s, "input_ids": enc["input_ids"][0].tolist(), "cls": cls[0].tolist()})
with open(os.path.join(out, "expected.json"), "w") as f:
    json.dump({"max_length": 128, "cases": cases}, f, indent=1)
print("ok")
