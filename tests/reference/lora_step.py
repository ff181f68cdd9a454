"""One LoRA training forward and backward pass in PyTorch, the reference of tests/trainer.rs.

Usage: lora_step.py MODEL_DIR ADAPTER_DIR BATCH_JSON OUT_JSON

MODEL_DIR: the frozen base as transformers loads it (config.json + model.safetensors).
ADAPTER_DIR: the adapters in PEFT's layout (adapter_config.json + adapter_model.safetensors with
`base_model.model.<module>.lora_A.weight` / `lora_B.weight`). Every adapted `nn.Linear` becomes
`base(x) + lora_B(lora_A(x)) * lora_alpha / r`: PEFT's `lora.Linear.forward` without dropout
(the test runs with dropout 0, since the two libraries' dropout masks cannot be drawn alike).
BATCH_JSON: input_ids, attention_mask and labels (-100 = no loss) of one right-padded batch.

Writes the loss transformers' LlamaForCausalLM computes from the labels and the gradient of every
adapter matrix, by its PEFT name.
"""

import json
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

PREFIX = "base_model.model."


class LoraLinear(torch.nn.Module):
    def __init__(self, base, a, b, scaling):
        super().__init__()
        self.base = base
        self.lora_A = torch.nn.Parameter(a.clone())
        self.lora_B = torch.nn.Parameter(b.clone())
        self.scaling = scaling

    def forward(self, x):
        return self.base(x) + (x @ self.lora_A.T) @ self.lora_B.T * self.scaling


def main():
    model_dir, adapter_dir, batch_path, out_path = sys.argv[1:5]
    torch.use_deterministic_algorithms(True)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="sdpa"
    )
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    with open(f"{adapter_dir}/adapter_config.json") as f:
        config = json.load(f)
    scaling = config["lora_alpha"] / config["r"]
    tensors = load_file(f"{adapter_dir}/adapter_model.safetensors")
    adapted = {}
    for key in sorted(tensors):
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[len(PREFIX) : -len(".lora_A.weight")]
        parent_name, child = module.rsplit(".", 1)
        parent = model.get_submodule(parent_name)
        layer = LoraLinear(
            getattr(parent, child),
            tensors[key],
            tensors[f"{PREFIX}{module}.lora_B.weight"],
            scaling,
        )
        setattr(parent, child, layer)
        adapted[module] = layer
    with open(batch_path) as f:
        batch = json.load(f)
    out = model(
        input_ids=torch.tensor(batch["input_ids"]),
        attention_mask=torch.tensor(batch["attention_mask"]),
        labels=torch.tensor(batch["labels"]),
    )
    out.loss.backward()
    grads = {}
    for module, layer in adapted.items():
        grads[f"{PREFIX}{module}.lora_A.weight"] = layer.lora_A.grad.flatten().tolist()
        grads[f"{PREFIX}{module}.lora_B.weight"] = layer.lora_B.grad.flatten().tolist()
    with open(out_path, "w") as f:
        json.dump({"loss": out.loss.item(), "grads": grads, "adapted": len(adapted)}, f)


if __name__ == "__main__":
    main()
