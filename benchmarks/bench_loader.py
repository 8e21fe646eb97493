"""Loader throughput: images/s that BatchLoader delivers from an image folder and from a prepared set.

    python benchmarks/bench_loader.py [--images 256] [--workers 2] [--batch 128] [--crop 227] [--json PATH]

Generates an ImageNet-like folder in a temporary directory (JPEGs of 500x375 and 375x500, ImageNet's
most common sizes, with photo-like texture so they compress like photos, ~100 KB), then measures

  - `convnet prepare` (resize to a 256 shorter side, all cores): images/s
  - BatchLoader(train=True, crop 227: random crop, flip, PCA lighting, mean subtraction) over
      the folder itself (decode + resize every image every epoch: Pillow) and over the prepared set,
      decoding with simplejpeg and with Pillow: images/s, median of 3 epochs after one warm-up.

Results: a table on stdout and JSON at --json (default benchmarks/results/bench_loader.json).
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

import convnet
from convnet.data import BatchLoader, imagenet_folder
from convnet.data import prepare as prep

HERE = os.path.dirname(os.path.abspath(__file__))


def make_folder(root, n, rng):
    from PIL import Image
    for split, count in (("train", n), ("val", max(2, n // 8))):
        for k in range(count):
            c = f"class{k % 4}"
            os.makedirs(os.path.join(root, split, c), exist_ok=True)
            h, w = (375, 500) if k % 3 else (500, 375)
            y, x = np.mgrid[0:h, 0:w]
            base = 128 + 60 * np.sin(x[..., None] / rng.uniform(8, 40, 3)) * np.cos(y[..., None] / rng.uniform(8, 40, 3))
            img = np.clip(base + rng.normal(0, 18, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(os.path.join(root, split, c, f"{k}.JPEG"), quality=90)


def loader_rate(ds, args):
    loader = BatchLoader(ds, args.batch, train=True, crop=args.crop, workers=args.workers)
    rates = []
    for epoch in range(4):
        loader.set_epoch(epoch)
        t = time.perf_counter()
        n = sum(len(y) for _, y in loader)
        if epoch:  # the first epoch warms caches and computes the training statistics
            rates.append(n / (time.perf_counter() - t))
    return statistics.median(rates)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=256, help="training images generated (default: 256)")
    ap.add_argument("--workers", type=int, default=2, help="BatchLoader threads (default: 2)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--crop", type=int, default=227)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = []
    print(f"loader benchmark: {args.images} training images (500x375 JPEG), batch {args.batch}, crop {args.crop}, "
          f"{args.workers} loader threads, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        src, out = os.path.join(tmp, "src"), os.path.join(tmp, "prepared")
        make_folder(src, args.images, rng)
        t = time.perf_counter()
        m = prep.prepare(src, out, progress=False)
        dt = time.perf_counter() - t
        n = sum(s["n"] for s in m["splits"].values())
        size_kb = os.path.getsize(os.path.join(out, "train.jpegs")) / m["splits"]["train"]["n"] / 1024
        rows.append(dict(what=f"convnet prepare ({m['decoder']}, {os.cpu_count()} processes)", img_s=n / dt))
        print(f"prepared {n} images in {dt:.1f} s ({size_kb:.0f} KB per stored image)")
        folder_train, _ = imagenet_folder(src, size=256)
        rows.append(dict(what="BatchLoader over the image folder (Pillow)", img_s=loader_rate(folder_train, args)))
        decoders = ["simplejpeg", "Pillow"] if prep.simplejpeg is not None else ["Pillow"]
        saved = prep.simplejpeg
        try:
            for d in decoders:
                prep.simplejpeg = saved if d == "simplejpeg" else None
                train, _ = prep.open_prepared(out)
                rows.append(dict(what=f"BatchLoader over the prepared set ({d})", img_s=loader_rate(train, args)))
        finally:
            prep.simplejpeg = saved
    for r in rows:
        print(f"{r['what']:<55} {r['img_s']:8.0f} img/s")
    path = args.json or os.path.join(HERE, "results", "bench_loader.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(dict(images=args.images, batch=args.batch, crop=args.crop, workers=args.workers,
                       cores=os.cpu_count(), loadavg=os.getloadavg(), build=convnet.build_info(), results=rows),
                  f, indent=1, default=str)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
