"""Does bench_train.py's PyTorch twin compute the same thing as our net? Run both from the same weights
on the same synthetic batch with dropout off (the masks of two RNGs cannot agree) and print the loss
after each SGD step side by side. Equal losses step after step mean equal forward passes, gradients
and updates, so the speed comparison in bench_train.py compares the same work.

    python benchmarks/check_twin.py [--models 2012,owt,small] [--batch 8] [--steps 5]

`--against winograd` runs the same check between two of our own nets instead: every stride-1 3x3/5x5 conv
forced to `algorithm="winograd"` against all convs `"direct"` (issue 15's criterion: 50 steps from the
same start agree to the twin check's bound), with no torch needed; `--against auto` compares the default
(the selector's choice per layer and pass) with all-direct:

    python benchmarks/check_twin.py --against winograd --models small,owt --steps 50
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


def with_algorithm(cfg, algorithm):
    """cfg with every conv that algorithm can run set to it ("winograd": stride 1, 3x3 or 5x5, pad < size;
    "direct" and "auto": every conv)."""
    out = []
    for layer in cfg:
        layer = dict(layer)
        if layer["type"] == "conv":
            size, stride, pad = layer["size"], layer.get("stride", 1), layer.get("pad", 0)
            if algorithm in ("direct", "auto") or (stride in (1, (1, 1)) and size in (3, 5) and pad < size):
                layer["algorithm"] = algorithm
        out.append(layer)
    return out


def against_algorithm(algorithm, models_, batch, steps):
    """Nets of ours with convs on `algorithm` ("winograd" where it applies, or "auto") vs all-direct nets,
    same start and batches; returns the largest relative loss gap."""
    print(f"{'model':8} {'step':>4} {'direct loss':>12} {algorithm + ' loss':>14} {'rel diff':>9}")
    worst = 0.0
    for name in models_:
        cfg = config_without_dropout(name)
        nets = {"direct": Net(with_algorithm(cfg, "direct"), seed=0),
                algorithm: Net(with_algorithm(cfg, algorithm), seed=0)}
        n = sum(getattr(layer, "algorithm", None) == algorithm for layer in nets[algorithm].layers)
        print(f"{name}: {n} conv layer(s) on {algorithm}")
        x_np, y_np = bench_train.synthetic_batch(nets["direct"], batch)
        x, labels = convnet.from_numpy(x_np), convnet.from_numpy(y_np)
        for step in range(1, steps + 1):
            loss = {}
            for a, net in nets.items():
                net.train_step(x, labels, lr=0.01, momentum=0.9, weight_decay=5e-4, step=step, seed=1)
                loss[a] = float(net._out[net.cost_layer.name].numpy()[0])
            rel = abs(loss[algorithm] - loss["direct"]) / max(abs(loss["direct"]), 1e-12)
            worst = max(worst, rel)
            print(f"{name:8} {step:4d} {loss['direct']:12.6f} {loss[algorithm]:14.6f} {rel:9.1e}", flush=True)
    return worst


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="2012,owt,small")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--against", choices=("torch", "winograd", "auto"), default="torch",
                    help="torch: our net vs its PyTorch twin; winograd / auto: our convs forced to Winograd / "
                         "left to the selector vs all-direct")
    args = ap.parse_args(argv)
    if args.against != "torch":
        worst = against_algorithm(args.against, args.models.split(","), args.batch, args.steps)
        print(f"largest relative difference: {worst:.1e}")
        return 0 if worst < 1e-4 else 1
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
