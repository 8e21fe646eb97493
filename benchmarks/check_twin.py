"""Does bench_train.py's PyTorch twin compute the same thing as our net? Run both from the same weights
on the same synthetic batch with dropout off (the masks of two RNGs cannot agree) and print the loss
after each SGD step side by side. Equal losses step after step mean equal forward passes, gradients
and updates, so the speed comparison in bench_train.py compares the same work.

    python benchmarks/check_twin.py [--models 2012,owt,small] [--batch 8] [--steps 5]
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_train  # noqa: E402
from common import import_torch  # noqa: E402

import convnet  # noqa: E402
from convnet import models  # noqa: E402
from convnet.net import Net  # noqa: E402


def config_without_dropout(name):
    cfg = {"2012": lambda: models.two_tower_config(dropout=0.0, devices=("cpu", "cpu")),
           "owt": models.alexnet_owt_config, "small": models.small_config}[name]()
    for layer in cfg:
        if layer["type"] == "dropout":
            layer["p"] = 0.0
    return cfg


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="2012,owt,small")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args(argv)
    torch = import_torch(required=True)
    torch.set_num_threads(convnet.build_info()["cpu_threads"])
    print(f"{'model':8} {'step':>4} {'ours loss':>12} {'torch loss':>12} {'rel diff':>9}")
    worst = 0.0
    for name in args.models.split(","):
        net = Net(config_without_dropout(name), seed=0)
        x_np, y_np = bench_train.synthetic_batch(net, args.batch)
        twin, opt = bench_train.torch_twin(torch, net, "cpu")
        x, labels = convnet.from_numpy(x_np), convnet.from_numpy(y_np)
        xt = torch.from_numpy(x_np).permute(0, 3, 1, 2).contiguous()
        yt = torch.from_numpy(y_np).long()
        for step in range(1, args.steps + 1):
            net.train_step(x, labels, lr=0.01, momentum=0.9, weight_decay=5e-4, step=step, seed=1)
            ours = float(net._out[net.cost_layer.name].numpy()[0])
            opt.zero_grad()
            loss = twin(xt, yt)
            loss.backward()
            opt.step()
            rel = abs(ours - loss.item()) / max(abs(loss.item()), 1e-12)
            worst = max(worst, rel)
            print(f"{name:8} {step:4d} {ours:12.6f} {loss.item():12.6f} {rel:9.1e}")
    print(f"largest relative difference: {worst:.1e}")
    return 0 if worst < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
