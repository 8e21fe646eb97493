"""Command line: python -m convnet {train, eval, predict, plot, prepare, info, summary} (also the `convnet` script).

    python -m convnet train                          # small default net, built-in data, ./runs/...
    python -m convnet train --data cifar10:~/data --epochs 30 --plot
    python -m convnet train --resume runs/small-20260101-120000
    python -m convnet train --model 2012 --data imagenet:~/data --devices cuda:0,cuda:1
    mpiexec -n 4 python -m mpi4py -m convnet train --data cifar10:~/data --batch-size 128 --micro-batch 32
    python -m convnet eval --checkpoint runs/small-20260101-120000 --views 10
    python -m convnet predict --checkpoint runs/small-20260101-120000 cat.jpg dog.png
    python -m convnet plot runs/small-20260101-120000
    python -m convnet prepare ~/data/imagenet ~/data/imagenet-256   # then --data imagenet:~/data/imagenet-256
    python -m convnet info
    python -m convnet summary --model 2012

Every user error (a bad flag, value, file or config) is one line "convnet <command>: error: ..." on
stderr and exit status 2; a diverged run (non-finite loss) exits with 3.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from .hparams import HParams, parse_lr_steps


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: "convnet <command>: error: ...", exit 2."""

    def error(self, message):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _int_at_least(low):
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"want a whole number, got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {v}")
        return v
    return parse


def _float(text):
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"want a number, got {text!r}") from None


def _hparam_flags(t):
    """One flag per HParams field; the help shows the record's default (one place for each)."""
    types = {"epochs": _int_at_least(1), "batch_size": _int_at_least(1), "seed": _int_at_least(0),
             "patience": _int_at_least(1), "save_every": _int_at_least(1), "lr": _float, "momentum": _float,
             "weight_decay": _float, "lighting": _float, "lr_steps": str, "micro_batch": _int_at_least(1)}
    for f in dataclasses.fields(HParams):
        flag = "--" + f.name.replace("_", "-")
        extra = {}
        if f.name == "schedule":
            extra["choices"] = ["step", "plateau"]
        elif f.name == "precision":
            extra["choices"] = ["fp32", "tf32", "bf16"]
        elif f.name == "eval_views":
            extra = {"choices": [1, 10], "type": int}
        elif f.name == "reduction":
            extra["choices"] = ["ordered", "fast"]
        else:
            extra["type"] = types[f.name]
        shown = f" (default: {f.default})" if f.default is not None else ""  # else the help says it
        t.add_argument(flag, default=None, help=f.metadata["help"] + shown, **extra)


def _parser():
    from . import __version__
    from .models import INPUT_SIZES
    p = _Parser(prog="convnet", description="AlexNet from scratch: train, evaluate, predict, inspect.")
    p.add_argument("--version", action="version", version=f"convnet {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a net (default: the small net on the built-in data)")
    t.add_argument("--model", default=None, help="default | 2012 | owt | a net config file (.json/.ini) "
                   "(default: the small net for images <= 64 px, else 2012)")
    t.add_argument("--data", default=None, help="builtin | cifar10:<path> | cifar100:<path> | imagenet:<path> "
                   "(default: builtin)")
    t.add_argument("--input-size", type=_int_at_least(1), default=None,
                   help="input side of a named model (default: the model's: "
                   + ", ".join(f"{v} {k}" for k, v in INPUT_SIZES.items()) + ")")
    t.add_argument("--num-classes", type=_int_at_least(1), default=None,
                   help="output classes of a named model (default: the data set's)")
    t.add_argument("--image-size", type=_int_at_least(1), default=None,
                   help="imagenet:<path> only: resize each image's shorter side to this and keep the centre "
                   "square (default: 256 for the AlexNets, input size x 8/7 for smaller nets)")
    _hparam_flags(t)
    t.add_argument("--device", default="auto", help="auto | cpu | cuda:0 ... (default: auto)")
    t.add_argument("--devices", default=None,
                   help="one device per tower, e.g. cuda:0,cuda:1 (model 2012: the paper's two-GPU split) "
                   "(default: all on --device)")
    t.add_argument("--workers", type=_int_at_least(0), default=2, help="loader threads (default: 2)")
    t.add_argument("--resume", default=None, help="continue a run: a checkpoint file or a run folder (default: "
                   "a new run)")
    t.add_argument("--out", default=None, help="the run folder (default: runs/<model>-<time>, or the "
                   "--resume folder); an existing run is refused unless --resume")
    t.add_argument("--plot", action="store_true", help="write curves.png and conv1_filters.png (matplotlib)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar or lines")

    e = sub.add_parser("eval", help="evaluate a checkpoint: top-1/top-5 error")
    e.add_argument("--checkpoint", required=True, help="a checkpoint file or a run folder")
    e.add_argument("--data", default=None, help="default: the data the checkpoint was trained on")
    e.add_argument("--views", type=int, choices=[1, 10], default=1, help="(default: 1)")
    e.add_argument("--batch-size", type=_int_at_least(1), default=128, help="(default: 128)")
    e.add_argument("--device", default=None, help="(default: the best one here)")

    pr = sub.add_parser("predict", help="top-5 classes of image files")
    pr.add_argument("--checkpoint", required=True, help="a checkpoint file or a run folder")
    pr.add_argument("--top", type=_int_at_least(1), default=5, help="classes per image (default: 5)")
    pr.add_argument("--device", default=None, help="(default: the best one here)")
    pr.add_argument("images", nargs="+", help="image files (any format Pillow reads)")

    pl = sub.add_parser("plot", help="draw an existing run: curves.png, conv1_filters.png")
    pl.add_argument("run", help="a run folder")

    pp = sub.add_parser("prepare", help="pre-resize an ImageNet-style folder (shorter side 256) into a compact set")
    pp.add_argument("src", help="the folder with train/<class>/ and val/<class>/")
    pp.add_argument("out", help="a new folder for the prepared set (then --data imagenet:<out>)")
    pp.add_argument("--size", type=_int_at_least(1), default=256, help="shorter side of the stored images (default: 256)")
    pp.add_argument("--quality", type=_int_at_least(1), default=90, help="JPEG quality, 1-100 (default: 90)")
    pp.add_argument("--workers", type=_int_at_least(0), default=None,
                    help="processes; 0: this one (default: the number of cores)")
    pp.add_argument("--no-progress", action="store_true", help="no progress bar")

    sub.add_parser("info", help="build information and devices")

    s = sub.add_parser("summary", help="print a model's layers, shapes, parameters and FLOPs")
    s.add_argument("--model", default="2012", help="(default: 2012)")
    s.add_argument("--num-classes", type=_int_at_least(1), default=None,
                   help="(default: 10 for the small net, 1000 for AlexNet)")
    s.add_argument("--input-size", type=_int_at_least(1), default=None, help="(default: the model's)")
    return p


def _load_image(path, net):
    """An image file -> uint8 (size, size, 3) as the net saw its training images: the shorter side
    resized to the side of the run's training images (checkpoint meta image_shape; else
    data.folder_image_size: 32 for the small net's 28 crops, 256 for AlexNet), the centre square,
    by the decode every image folder uses (bounded pixels, 16-bit grey scaled); predict then takes
    the centre crop of the net's input size."""
    from PIL import Image
    from .data import folder_image_size
    from .data.imagenet import load_image
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image not found: {path}")
    trained_on = net.checkpoint.get("image_shape")
    size = int(min(trained_on[:2])) if trained_on else folder_image_size(net.input_shape[0])
    try:
        return load_image(path, size)
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError, Image.DecompressionBombError) as e:
        raise ValueError(f"image {path}: cannot be read ({e})") from None


def _run(args):
    import convnet
    if args.command == "info":
        print(json.dumps(convnet.build_info(), indent=2))
        print("devices:", ", ".join(convnet.devices()))
    elif args.command == "summary":
        if os.path.exists(args.model):
            net = convnet.Net(args.model, allocate=False)
        else:
            from .models import canonical_name
            default_classes = 10 if canonical_name(args.model) == "default" else 1000
            net = convnet.get_model(args.model, num_classes=args.num_classes or default_classes,
                                    input_size=args.input_size, allocate=False)
        net.summary()
    elif args.command == "train":
        hp = {f.name: getattr(args, f.name) for f in dataclasses.fields(HParams)}
        if hp["lr_steps"] is not None:
            hp["lr_steps"] = parse_lr_steps(hp["lr_steps"])
        HParams(**{k: v for k, v in hp.items() if v is not None}).validate(flags=True)
        r = convnet.train(model=args.model, data=args.data, device=args.device, out_dir=args.out,
                          resume=args.resume, workers=args.workers, progress=not args.no_progress,
                          plot=args.plot, devices=args.devices, input_size=args.input_size,
                          num_classes=args.num_classes, image_size=args.image_size, **hp)
        if r.history and r.rank == 0:  # data parallel: rank 0 speaks
            h = r.history[-1]
            print(f"final: test top-1 accuracy {100 * (1 - h['val_top1_err']):.2f}% "
                  f"(top-5 error {100 * h['val_top5_err']:.2f}%) after {h['epoch']} epochs, "
                  f"{r.seconds:.1f} s; checkpoint {r.checkpoint}")
    elif args.command == "eval":
        net = convnet.load_checkpoint(args.checkpoint, device=args.device)
        data = args.data or net.checkpoint.get("data") or "builtin"
        size = None if args.data else net.checkpoint.get("image_size")  # the training run's folder size
        r = convnet.evaluate(net, data, views=args.views, batch_size=args.batch_size, image_size=size,
                             progress=True)
        print(f"{args.checkpoint} on {data} ({r['n']} images, {r['views']} view(s)): "
              f"top-1 error {100 * r['top1_err']:.2f}%, top-5 error {100 * r['top5_err']:.2f}%, "
              f"loss {r['loss']:.4f}" + (f"; skipped {len(r['skipped'])} unreadable images" if r.get("skipped") else ""))
    elif args.command == "predict":
        from .evaluate import predict_topk
        net = convnet.load_checkpoint(args.checkpoint, device=args.device)
        names = net.checkpoint.get("class_names")
        for path in args.images:
            top = predict_topk(net, _load_image(path, net)[None], args.top, names)[0]
            print(f"{path}: " + ", ".join(f"{name} {100 * p:.1f}%" for _, name, p in top))
    elif args.command == "prepare":
        from .data.prepare import prepare
        m = prepare(args.src, args.out, size=args.size, workers=args.workers, quality=args.quality,
                    progress=not args.no_progress)
        for split, info in m["splits"].items():
            print(f"{split}: {info['n']} images, {len(info['skipped'])} skipped")
        print(f"prepared {len(m['classes'])} classes at shorter side {m['size']} in {args.out} "
              f"(use --data imagenet:{args.out})")
    elif args.command == "plot":
        from .plots import plot_run
        for path in plot_run(args.run):
            print(path)


def _one_line(err) -> str:
    return " ".join(str(err).split())


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from .checkpoint import RunLockedError
    from .train import NonFiniteLossError
    try:
        _run(args)
    except NonFiniteLossError as err:
        print(f"convnet {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 3
    except (ValueError, OSError, ImportError, RunLockedError) as err:
        # User errors: bad values, files, configs (CheckpointError is a ValueError), a held run folder.
        print(f"convnet {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("convnet: interrupted (the last checkpoint written is complete)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
