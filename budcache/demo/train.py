"""Train the demo model reproducibly on CPU: ``python -m budcache.demo.train``.

Rectified flow: x_t = (1 - t) x0 + t eps, target v = eps - x0, t logit-normal, 10% label
dropout (null class), AdamW with cosine decay, EMA of the weights. The EMA weights are saved
in float16 (safetensors) next to the model code.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from .data import load_digits_16
from .model import DEMO_CONFIG, NULL_CLASS, WEIGHTS, DigitsFlux, pack


def train(steps: int, batch: int, lr: float, seed: int, out: Path) -> dict:
    torch.manual_seed(seed)
    images, labels, _ = load_digits_16()
    data = pack(images)
    model = DigitsFlux().train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 200) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    gen = torch.Generator().manual_seed(seed)
    losses, start = [], time.perf_counter()
    for step in (bar := tqdm(range(steps), desc="train")):
        idx = torch.randint(0, data.shape[0], (batch,), generator=gen)
        x0, y = data[idx], labels[idx].clone()
        y[torch.rand(batch, generator=gen) < 0.1] = NULL_CLASS
        t = torch.sigmoid(torch.randn(batch, generator=gen))
        eps = torch.randn(x0.shape, generator=gen)
        xt = (1 - t[:, None, None]) * x0 + t[:, None, None] * eps
        loss = torch.nn.functional.mse_loss(model(xt, t, y), eps - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            decay = min(0.999, (step + 1) / (step + 10))
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in ema.state_dict().items()}
    info = {
        "steps": steps,
        "batch": batch,
        "lr": lr,
        "seed": seed,
        "seconds": round(time.perf_counter() - start, 1),
        "final_loss": sum(losses[-500:]) / len(losses[-500:]),
        "params": sum(p.numel() for p in model.parameters()),
        "config": DEMO_CONFIG,
    }
    save_file(state, str(out), metadata={"budcache": json.dumps(info)})
    return info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=WEIGHTS)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(json.dumps(train(a.steps, a.batch, a.lr, a.seed, a.out), indent=1))


if __name__ == "__main__":
    main()
