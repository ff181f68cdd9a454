"""Reference side of tests/deploy_transformers.rs: a packaged model folder used as a transformers
user would, with no extra arguments.

    python transformers_generate.py MODEL_DIR INPUTS.jsonl OUT.json

Loads the folder with AutoTokenizer and AutoModelForCausalLM / AutoModelForSeq2SeqLM (which one
from config.json's `is_encoder_decoder`), renders each input with the tokenizer's chat template
(one user message), greedy-generates one input at a time with the folder's generation_config.json
and writes, per input, the prompt ids, the generated ids and the decoded text (special tokens
skipped, stripped: what `p2m predict` writes), plus what was loaded.
"""

import json
import sys

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
)


def main(model_dir: str, inputs_path: str, out_path: str) -> None:
    torch.set_num_threads(1)
    config = AutoConfig.from_pretrained(model_dir)
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = auto.from_pretrained(model_dir)
    model.eval()
    with open(inputs_path, encoding="utf-8") as f:
        inputs = [json.loads(line)["input"] for line in f if line.strip()]
    rows = []
    for text in inputs:
        enc = tok.apply_chat_template(
            [{"role": "user", "content": text}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        with torch.no_grad():
            out = model.generate(**enc)
        prompt_len = 0 if config.is_encoder_decoder else enc["input_ids"].shape[1]
        generated = out[0][prompt_len:].tolist()
        rows.append(
            {
                "input": text,
                "prompt_ids": enc["input_ids"][0].tolist(),
                "generated_ids": generated,
                "text": tok.decode(generated, skip_special_tokens=True).strip(),
            }
        )
    g = model.generation_config
    report = {
        "model_class": type(model).__name__,
        "auto_class": auto.__name__,
        "tokenizer_class": type(tok).__name__,
        "input_template": tok.init_kwargs.get("p2m_input_template"),
        "generation": {
            "do_sample": g.do_sample,
            "num_beams": g.num_beams,
            "max_new_tokens": g.max_new_tokens,
            "repetition_penalty": g.repetition_penalty,
            "eos_token_id": g.eos_token_id,
            "pad_token_id": g.pad_token_id,
        },
        "rows": rows,
    }
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(report, f, ensure_ascii=False)


if __name__ == "__main__":
    main(*sys.argv[1:4])
