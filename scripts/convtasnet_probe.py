"""Would a small Conv-TasNet separate better than MulCat on the speech preset's budget? (issue 43, item 1)

The probe that led to the ``convtasnet`` family (ocd/models/convtasnet.py), kept as it
ran so that its recorded curve (docs/runs/speech-convtasnet/) reproduces: the family is
the same network with its 1x1 convolutions as Linear layers on channels-last frames (and so
another draw of initial weights), trained under params.yaml's learning-rate schedule.
Here: a Conv-TasNet (Luo and Mesgarani, 2019: a learnt 1-D
encoder, a temporal convolutional network of dilated depthwise-separable blocks
that masks the encoder's frames, a transposed-convolution decoder) trained on
the speech preset's mixtures with the same loss (ocd.tasks.separation, the
permutation-invariant SI-SNR), the same dynamic mixing (ocd.models.separator.dynamic_mix)
and the same batch size, for a wall-clock budget. Every ``--every`` seconds it
scores the calibration mixtures (where a recipe would be chosen); the test
mixtures are scored once, at the end, and reported only. One JSON line per point:

    OCD_THREADS=1 .venv/bin/python scripts/convtasnet_probe.py --seconds 900 --size small > curve.jsonl

Compare with the MulCat curve (docs/RESULTS.md, "A base separator worth
overfitting"), whose runs also went one thread each.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ocd.data.registry import load_dataset  # noqa: E402
from ocd.device import generator  # noqa: E402
from ocd.models.separator import dynamic_mix  # noqa: E402
from ocd.presets import apply, load  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# N filters of L samples (hop L / 2), B bottleneck and H hidden channels, X blocks per repeat, R repeats
SIZES = {"small": dict(N=64, L=32, B=64, H=128, X=6, R=2), "medium": dict(N=128, L=32, B=128, H=256, X=8, R=2)}


class Block(nn.Module):
    """1x1 conv, PReLU, norm, dilated depthwise conv, PReLU, norm, 1x1 conv back; residual."""

    def __init__(self, b: int, h: int, dilation: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(b, h, 1), nn.PReLU(), nn.GroupNorm(1, h),
            nn.Conv1d(h, h, 3, padding=dilation, dilation=dilation, groups=h), nn.PReLU(), nn.GroupNorm(1, h),
            nn.Conv1d(h, b, 1))

    def forward(self, v):
        return v + self.net(v)


class ConvTasNet(nn.Module):
    def __init__(self, speakers: int, samples: int, N: int, L: int, B: int, H: int, X: int, R: int):
        super().__init__()
        self.speakers, self.samples, self.N = speakers, samples, N
        self.encoder = nn.Conv1d(1, N, L, stride=L // 2, bias=False)
        self.tcn = nn.Sequential(nn.GroupNorm(1, N), nn.Conv1d(N, B, 1),
                                 *[Block(B, H, 2 ** x) for _ in range(R) for x in range(X)],
                                 nn.PReLU(), nn.Conv1d(B, speakers * N, 1))
        self.decoder = nn.ConvTranspose1d(N, 1, L, stride=L // 2, bias=False)

    def forward(self, x):  # [B, 1, T] -> [B, speakers * T]
        w = torch.relu(self.encoder(x))
        m = torch.sigmoid(self.tcn(w)).reshape(len(x), self.speakers, self.N, -1)
        s = self.decoder((m * w[:, None]).flatten(0, 1)).reshape(len(x), self.speakers, -1)
        s = nn.functional.pad(s, (0, max(0, self.samples - s.shape[-1])))[..., :self.samples]
        return s.reshape(len(x), -1)


def score(model, task, x, y) -> dict:
    model.eval()
    with torch.no_grad():
        out = torch.cat([model(x[i:i + 32]) for i in range(0, len(x), 32)])
    model.train()
    return task.metrics(out, y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=900)
    ap.add_argument("--every", type=float, default=150)
    ap.add_argument("--size", choices=SIZES, default="small")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OCD_THREADS", "1")))
    p = apply(ROOT / "params.yaml", load("speech"))
    data = load_dataset(p.data)
    task = data.make_task()
    speakers, samples = int(data.info["speakers"]), data.x_train.shape[-1]
    torch.manual_seed(args.seed)
    model = ConvTasNet(speakers, samples, **SIZES[args.size])
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    remix, order = generator(args.seed, 1), generator(args.seed)
    x_cal, y_cal = data.split("cal")
    n, bs = len(data.y_train), p.base.batch_size
    start, step, next_score = time.perf_counter(), 0, args.every
    params = sum(v.numel() for v in model.parameters())
    while True:
        for idx in torch.randperm(n, generator=order).split(bs):
            xb, yb = dynamic_mix(data.y_train[idx], speakers, remix)
            loss = task.loss(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            step += 1
            elapsed = time.perf_counter() - start
            if elapsed >= next_score or elapsed >= args.seconds:
                record = {"size": args.size, "parameters": params, "lr": args.lr, "seconds": round(elapsed),
                          "steps": step, "epochs": round(step * bs / n, 1), "cal": score(model, task, x_cal, y_cal)}
                if elapsed >= args.seconds:
                    record["test"] = score(model, task, *data.split("test"))
                print(json.dumps(record), flush=True)
                next_score += args.every
                if elapsed >= args.seconds:
                    return


if __name__ == "__main__":
    main()
