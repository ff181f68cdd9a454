"""Reference trajectories of torch.optim.AdamW for tests/trainer.rs.

Two parameters (one with weight decay, one exempt, as the trainer's decay rule decides by name),
fixed gradients per step, a warm-up + linear-decay learning rate, and gradient-norm clipping as
`torch.nn.utils.clip_grad_norm_`. Writes tests/fixtures/parity/adamw/trajectory.json.

    python scripts/parity/make_adamw_fixtures.py   # needs torch==2.11.0
"""
import json
import pathlib

import torch

torch.manual_seed(0)
out = pathlib.Path(__file__).resolve().parents[2] / "tests/fixtures/parity/adamw/trajectory.json"

w0 = torch.randn(3, 4, dtype=torch.float32)
b0 = torch.randn(4, dtype=torch.float32)
w = torch.nn.Parameter(w0.clone())
b = torch.nn.Parameter(b0.clone())
lr, wd, steps, warmup, max_norm = 1e-2, 0.1, 6, 2, 1.0
opt = torch.optim.AdamW([{"params": [w], "weight_decay": wd}, {"params": [b], "weight_decay": 0.0}], lr=lr, foreach=False)
sched = torch.optim.lr_scheduler.LambdaLR(
    opt, lambda s: s / max(1, warmup) if s < warmup else max(0.0, (steps - s) / max(1, steps - warmup))
)
grads, lrs, after, norms = [], [], [], []
for step in range(steps):
    gw = torch.randn(3, 4) * (3.0 if step % 2 == 0 else 0.2)
    gb = torch.randn(4) * (3.0 if step % 2 == 0 else 0.2)
    w.grad, b.grad = gw.clone(), gb.clone()
    norms.append(float(torch.nn.utils.clip_grad_norm_([w, b], max_norm)))
    lrs.append(opt.param_groups[0]["lr"])
    opt.step()
    sched.step()
    grads.append({"w": gw.flatten().tolist(), "b": gb.flatten().tolist()})
    after.append({"w": w.detach().flatten().tolist(), "b": b.detach().flatten().tolist()})

out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps({
    "torch": torch.__version__, "lr": lr, "weight_decay": wd, "steps": steps, "warmup": warmup, "max_norm": max_norm,
    "w0": w0.flatten().tolist(), "b0": b0.flatten().tolist(), "grads": grads, "lrs": lrs, "grad_norms": norms, "after": after,
}, indent=1))
print("wrote", out)
