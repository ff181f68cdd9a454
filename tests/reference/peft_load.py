"""Loads adapters written by `p2m train --keep-adapters` with PEFT itself, the check of
tests/trainer_lora.rs that the files are PEFT's layout and names.

Usage: peft_load.py BASE_DIR ADAPTER_DIR MERGED_DIR OUT_JSON

BASE_DIR: the frozen base (config.json + model.safetensors); ADAPTER_DIR: `final/adapter/`;
MERGED_DIR: `final/` (the merged weights p2m packaged).

Writes: how many LoRA modules PEFT built and how many adapter tensors the file has, the largest
difference between the adapter weights PEFT holds after loading and the file's (0 when every key
was found: a key PEFT does not know is left at its initial value), and the largest difference
between PEFT's `merge_and_unload()` weights and p2m's merged ones.
"""

import json
import sys

import torch
from peft import PeftModel, get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def main():
    base_dir, adapter_dir, merged_dir, out_path = sys.argv[1:5]
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter_dir)
    saved = load_file(f"{adapter_dir}/adapter_model.safetensors")
    loaded = get_peft_model_state_dict(model)
    missing = sorted(set(saved) - set(loaded))
    unexpected = sorted(set(loaded) - set(saved))
    adapter_diff = max(
        (saved[k] - loaded[k]).abs().max().item() for k in saved if k in loaded
    )
    modules = sum(1 for _, m in model.named_modules() if hasattr(m, "lora_A") and len(m.lora_A) > 0)
    merged = model.merge_and_unload().state_dict()
    ours = load_file(f"{merged_dir}/model.safetensors")
    merged_diff = max((ours[k] - merged[k]).abs().max().item() for k in ours)
    with open(out_path, "w") as f:
        json.dump(
            {
                "modules": modules,
                "tensors": len(saved),
                "missing": missing,
                "unexpected": unexpected,
                "max_adapter_diff": adapter_diff,
                "max_merged_diff": merged_diff,
            },
            f,
        )


if __name__ == "__main__":
    main()
