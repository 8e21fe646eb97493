"""Command line: python -m convnet {train, eval, info, summary} (also the `convnet` console script).

    python -m convnet train                          # small default net, built-in data, ./runs/...
    python -m convnet train --data cifar10:~/data --epochs 30 --plot
    python -m convnet train --resume runs/small-20260101-120000
    python -m convnet train --model 2012 --data imagenet:~/data --devices cuda:0,cuda:1
    python -m convnet eval --checkpoint runs/.../checkpoint.npz --views 10
    python -m convnet info
    python -m convnet summary --model 2012
"""
from __future__ import annotations

import argparse
import json
import sys


def _parser():
    p = argparse.ArgumentParser(prog="convnet", description="AlexNet from scratch: train, evaluate, inspect.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a net (default: the small net on the built-in data)")
    t.add_argument("--model", default=None, help="default | 2012 | owt | a net config file (.json/.ini)")
    t.add_argument("--data", default=None, help="builtin | cifar10:<path> | cifar100:<path> | imagenet:<path>")
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--momentum", type=float, default=None)
    t.add_argument("--weight-decay", type=float, default=None)
    t.add_argument("--schedule", choices=["step", "plateau"], default=None)
    t.add_argument("--lr-steps", default=None, help="epochs at which lr /= 10, comma separated, e.g. 6,9")
    t.add_argument("--device", default="auto", help="auto | cpu | cuda:0 ...")
    t.add_argument("--devices", default=None,
                   help="one device per tower, e.g. cuda:0,cuda:1 (model 2012: the paper's two-GPU split)")
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--workers", type=int, default=2)
    t.add_argument("--resume", default=None, help="a checkpoint file or a run folder")
    t.add_argument("--out", default=None, help="output folder (default runs/<model>-<time>)")
    t.add_argument("--plot", action="store_true", help="write curves.png and conv1_filters.png (matplotlib)")
    t.add_argument("--eval-views", type=int, choices=[1, 10], default=1)
    t.add_argument("--no-progress", action="store_true")

    e = sub.add_parser("eval", help="evaluate a checkpoint: top-1/top-5 error")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--data", default=None, help="default: the data the checkpoint was trained on")
    e.add_argument("--views", type=int, choices=[1, 10], default=1)
    e.add_argument("--batch-size", type=int, default=128)
    e.add_argument("--device", default=None)

    sub.add_parser("info", help="build information and devices")

    s = sub.add_parser("summary", help="print a model's layers, shapes, parameters and FLOPs")
    s.add_argument("--model", default="2012")
    s.add_argument("--num-classes", type=int, default=None)
    s.add_argument("--input-size", type=int, default=None)
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    import convnet
    try:
        if args.command == "info":
            print(json.dumps(convnet.build_info(), indent=2))
            print("devices:", ", ".join(convnet.devices()))
        elif args.command == "summary":
            import os
            if os.path.exists(args.model):
                net = convnet.Net(args.model, allocate=False)
            else:
                default_classes = 10 if args.model.lower() in ("default", "small") else 1000
                net = convnet.get_model(args.model, num_classes=args.num_classes or default_classes,
                                        input_size=args.input_size, allocate=False)
            net.summary()
        elif args.command == "train":
            steps = [int(s) for s in args.lr_steps.split(",") if s.strip()] if args.lr_steps else None
            r = convnet.train(model=args.model, data=args.data, epochs=args.epochs, batch_size=args.batch_size,
                              lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                              device=args.device, seed=args.seed, schedule=args.schedule, lr_steps=steps,
                              out_dir=args.out, resume=args.resume, workers=args.workers,
                              progress=not args.no_progress, plot=args.plot, eval_views=args.eval_views,
                              devices=args.devices)
            if r.history:
                h = r.history[-1]
                print(f"final: test top-1 accuracy {100 * (1 - h['val_top1_err']):.2f}% "
                      f"(top-5 error {100 * h['val_top5_err']:.2f}%) after {h['epoch']} epochs, "
                      f"{r.seconds:.1f} s; checkpoint {r.checkpoint}")
        elif args.command == "eval":
            net = convnet.load_checkpoint(args.checkpoint, device=args.device)
            data = args.data or net.checkpoint.get("data") or "builtin"
            r = convnet.evaluate(net, data, views=args.views, batch_size=args.batch_size)
            print(f"{args.checkpoint} on {data} ({r['n']} images, {r['views']} view(s)): "
                  f"top-1 error {100 * r['top1_err']:.2f}%, top-5 error {100 * r['top5_err']:.2f}%, "
                  f"loss {r['loss']:.4f}")
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"convnet {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("convnet: interrupted (the last checkpoint written is complete)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
