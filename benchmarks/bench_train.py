"""Training throughput: images/s of one full SGD step (forward, backward, update) for alexnet("owt"),
alexnet("2012") and the small default net, ours against the same network written in PyTorch.

    python benchmarks/bench_train.py                              # CPU, all three models
    python benchmarks/bench_train.py --models owt --batch 32 --steps 8
    python benchmarks/bench_train.py --device cuda:0              # batch 128
    python benchmarks/bench_train.py --profile --models owt       # + our time per layer and pass

What is measured: the median wall time of `net.train_step` (ours) and of `zero_grad; loss =
model(x); loss.backward(); opt.step()` (PyTorch) over --steps steps after --warmup steps, on one
synthetic batch made once (normal pixels at the net's input scale, uniform labels), so neither data
loading nor host-to-device copies are measured. On a GPU each step ends with a synchronisation.

The PyTorch twin is built from our net's own layer list (layer for layer, the same DAG: a
multi-input conv or fc is one conv/linear per input, summed, as ours; the two-tower 2012 net is two
towers), and starts from OUR initial parameters (converted to KCRS / CHW-flattened order), so shape,
FLOPs and initialisation scale are identical. LRN: torch divides alpha by size, so it is given
alpha * size (the paper's alpha, as ours). Dropout is inverted in both. SGD with momentum 0.9 and
weight decay 5e-4, biases at 2x the rate and no decay (the per-parameter multipliers of our layers),
torch's SGD (foreach where torch picks it). Precision fp32 in both: on CUDA, TF32 is switched off
explicitly for cuDNN and matmul (our kernels are strict fp32). Threads: torch.set_num_threads(our
OpenMP thread count). Memory format: --torch-format auto times a few steps of NCHW and of
channels_last and keeps torch's faster one (the table says which).

Peak memory: on the CPU each side runs in its own subprocess and reports its peak resident set size
(VmHWM) and the RSS before the net was built (imports), so one side's peak does not hide the
other's. On CUDA: torch.cuda.max_memory_allocated, and for ours the caching allocator's bytes held
(allocated + cached) after the run (it frees nothing back, so that is its high-water mark).

Output: a table on stdout and JSON at --json (default benchmarks/results/bench_train-<device>.json).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

from common import SPEEDUP_HEADER, SPEEDUP_LEGEND, import_torch, speedup

HERE = os.path.dirname(os.path.abspath(__file__))

MODELS = ("owt", "2012", "small")
CPU_BATCH = {"owt": 64, "2012": 64, "small": 128}   # about 10-20 s of steps per side on 2 cores
GPU_BATCH = 128


# --------------------------------------------------------------------------------------------------
# helpers

def rss_kb(field):
    """VmHWM (peak) or VmRSS (now) of this process, in kB (Linux); None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    if field == "VmHWM":
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return None


def build_net(model, device, num_classes=1000):
    import convnet
    if model == "small":
        return convnet.models.get_model("default", num_classes=10, device=device, seed=0)
    return convnet.alexnet(model, num_classes=num_classes, device=device, seed=0)


def synthetic_batch(net, batch, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((batch,) + tuple(net.input_shape), dtype=np.float32) * 64.0 *
         np.float32(net.input_scale))
    labels = rng.integers(0, net.num_classes, size=batch).astype(np.int32)
    return x, labels


def timed_steps(step, sync, steps, warmup):
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return times


# --------------------------------------------------------------------------------------------------
# ours

def run_ours(model, device, batch, steps, warmup, profile):
    import convnet
    base = rss_kb("VmRSS")
    net = build_net(model, device)
    x_np, y_np = synthetic_batch(net, batch)
    x = convnet.from_numpy(x_np, device)
    labels = convnet.from_numpy(y_np, device)
    on_gpu = device.startswith("cuda")
    sync = (lambda: convnet.synchronize(device)) if on_gpu else (lambda: None)
    counter = [0]

    def step():
        counter[0] += 1
        net.train_step(x, labels, lr=0.01, momentum=0.9, weight_decay=5e-4, step=counter[0], seed=1)

    times = timed_steps(step, sync, steps, warmup)
    out = dict(times=times, flops_per_image=3 * sum(l.flops() for l in net.layers),
               params=net.num_params, loss=float(net._out[net.cost_layer.name].numpy()[0]))
    if on_gpu:
        ms = convnet.memory_stats(device)
        out["peak_mem_mb"] = (ms.get("allocated_bytes", 0) + ms.get("cached_bytes", 0)) / 2**20
        out["mem_note"] = "caching allocator: allocated + cached after the run"
    else:
        out["peak_mem_mb"] = rss_kb("VmHWM") / 1024
        out["base_mem_mb"] = (base or 0) / 1024
        out["mem_note"] = "peak RSS of the process (VmHWM); base = RSS after imports"
    if profile:
        out["profile"] = profile_ours(net, step, sync)
    return out


def profile_ours(net, step, sync, steps=3):
    """Median time of each layer's forward and backward, and of the update, over a few steps
    (wrapping the layer methods with timers; the sum vs the step time shows the Python overhead)."""
    rec = {}

    def wrap(obj, attr, key):
        fn = getattr(obj, attr)

        def timed(*a, **k):
            sync()
            t0 = time.perf_counter()
            r = fn(*a, **k)
            sync()
            rec.setdefault(key, []).append(time.perf_counter() - t0)
            return r
        setattr(obj, attr, timed)
        return fn

    saved = []
    for l in net.layers:
        for attr in ("forward", "backward"):
            saved.append((l, attr, wrap(l, attr, (l.name, l.type, attr))))
    saved.append((net, "update", wrap(net, "update", ("update", "sgd", "update"))))
    totals = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync()
        totals.append(time.perf_counter() - t0)
    for obj, attr, fn in saved:
        if obj is net:
            del net.update  # back to the class method
        else:
            setattr(obj, attr, fn)
    rows = [dict(layer=k[0], type=k[1], pass_=k[2], ms=statistics.median(v) * 1e3) for k, v in rec.items()]
    return dict(step_ms=statistics.median(totals) * 1e3, rows=rows)


# --------------------------------------------------------------------------------------------------
# PyTorch twin

def torch_twin(torch, net, device):
    """An nn.Module running our net's layer DAG with torch ops, starting from our parameters."""
    from convnet import layers as L
    nn, F = torch.nn, torch.nn.functional
    dev = torch.device(device)

    class Twin(nn.Module):
        def __init__(self):
            super().__init__()
            self.plan = []
            self.mods = nn.ModuleDict()
            self.bias_params, self.weight_params = [], []
            for l in net.layers:
                if isinstance(l, L.Data):
                    self.plan.append((l.name, "data", [], None))
                    continue
                kind = l.type
                if isinstance(l, (L.Conv, L.FC)):
                    mods = []
                    for i, src in enumerate(l.inputs):
                        w = l.weights[i].value.numpy()
                        has_b = bool(l.bias_param) and i == 0
                        if isinstance(l, L.Conv):
                            K, R, S, Cg = w.shape
                            m = nn.Conv2d(Cg * int(l.groups), K, (R, S), stride=tuple(l.stride), padding=tuple(l.pad),
                                          groups=int(l.groups), bias=has_b)
                            m.weight.data.copy_(torch.from_numpy(np.ascontiguousarray(w.transpose(0, 3, 1, 2))))
                        else:
                            shp = net.layer(src).out_shape
                            m = nn.Linear(w.shape[1], w.shape[0], bias=has_b)
                            if len(shp) == 3:  # ours flattens (H, W, C); torch flattens (C, H, W)
                                H, W, C = shp
                                w = w.reshape(-1, H, W, C).transpose(0, 3, 1, 2).reshape(w.shape[0], -1)
                            m.weight.data.copy_(torch.from_numpy(np.ascontiguousarray(w)))
                        if has_b:
                            m.bias.data.copy_(torch.from_numpy(l.bias_param.value.numpy()))
                            self.bias_params.append((m.bias, l.bias_param))
                        self.weight_params.append((m.weight, l.weights[i]))
                        mods.append(m)
                    self.mods[l.name] = nn.ModuleList(mods)
                    self.plan.append((l.name, kind, list(l.inputs), bool(getattr(l, "relu", False))))
                elif kind == "lrn":
                    size, alpha, beta, k, over = l._args()
                    self.plan.append((l.name, kind, list(l.inputs), (size, alpha if over else alpha * size, beta, k)))
                elif kind in ("maxpool", "avgpool"):
                    self.plan.append((l.name, kind, list(l.inputs), (tuple(l.size), tuple(l.stride), tuple(l.pad))))
                elif kind == "dropout":
                    self.plan.append((l.name, kind, list(l.inputs), float(l.p)))
                elif kind in ("relu", "softmax", "copy"):
                    self.plan.append((l.name, kind, list(l.inputs), None))
                else:
                    raise ValueError(f"bench_train: no torch twin for layer type {kind!r}")

        def forward(self, x, labels):
            out = {}
            for name, kind, inputs, arg in self.plan:
                if kind == "data":
                    out[name] = x
                elif kind in ("conv", "fc"):
                    y = None
                    for m, src in zip(self.mods[name], inputs):
                        v = out[src]
                        if kind == "fc" and v.dim() > 2:
                            v = v.flatten(1)
                        y = m(v) if y is None else y + m(v)
                    out[name] = F.relu(y) if arg else y
                elif kind == "lrn":
                    size, alpha, beta, k = arg
                    out[name] = F.local_response_norm(out[inputs[0]], size, alpha, beta, k)
                elif kind == "maxpool":
                    out[name] = F.max_pool2d(out[inputs[0]], arg[0], arg[1], arg[2])
                elif kind == "avgpool":
                    out[name] = F.avg_pool2d(out[inputs[0]], arg[0], arg[1], arg[2], count_include_pad=False)
                elif kind == "dropout":
                    out[name] = F.dropout(out[inputs[0]], arg, training=True)
                elif kind == "relu":
                    out[name] = F.relu(out[inputs[0]])
                elif kind == "copy":
                    out[name] = out[inputs[0]]
                elif kind == "softmax":
                    return F.cross_entropy(out[inputs[0]], labels)
            raise ValueError("bench_train: the net has no softmax cost layer")

    twin = Twin().to(dev)
    groups = {}
    for tp, ours in twin.weight_params + twin.bias_params:
        key = (ours.lr_mult, ours.wd_mult)
        groups.setdefault(key, []).append(tp)
    opt = torch.optim.SGD([dict(params=ps, lr=0.01 * lm, weight_decay=5e-4 * wm) for (lm, wm), ps in groups.items()],
                          lr=0.01, momentum=0.9)
    return twin, opt


def run_torch(model, device, batch, steps, warmup, threads, fmt):
    import torch
    import convnet
    on_gpu = device.startswith("cuda")
    if on_gpu:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_num_threads(threads)
    base = rss_kb("VmRSS")
    net = build_net(model, "cpu")  # our net only as the description and the initial parameters
    x_np, y_np = synthetic_batch(net, batch)
    twin, opt = torch_twin(torch, net, device)
    del net
    dev = torch.device(device)
    x_nchw = torch.from_numpy(np.ascontiguousarray(x_np.transpose(0, 3, 1, 2))).to(dev)
    labels = torch.from_numpy(y_np.astype(np.int64)).to(dev)
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)

    def make_step(memory_format):
        twin.to(memory_format=memory_format)
        x = x_nchw.contiguous(memory_format=memory_format)

        def step():
            opt.zero_grad(set_to_none=True)
            loss = twin(x, labels)
            loss.backward()
            opt.step()
            return loss
        return step

    formats = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
    trial = {}
    if fmt == "auto":
        for name, mf in formats.items():
            trial[name] = statistics.median(timed_steps(make_step(mf), sync, 2, 1))
        fmt = min(trial, key=trial.get)
    step = make_step(formats[fmt])
    times = timed_steps(step, sync, steps, warmup)
    out = dict(times=times, format=fmt, format_trial_s=trial, torch=torch.__version__,
               loss=float(step().detach().cpu()))
    if on_gpu:
        out["peak_mem_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
        out["mem_note"] = "torch.cuda.max_memory_allocated"
    else:
        out["peak_mem_mb"] = rss_kb("VmHWM") / 1024
        out["base_mem_mb"] = (base or 0) / 1024
        out["mem_note"] = "peak RSS of the process (VmHWM); base = RSS after imports"
    return out


# --------------------------------------------------------------------------------------------------
# driver

def worker(args):
    if args.worker == "ours":
        res = run_ours(args.models, args.device, args.batch, args.steps, args.warmup, args.profile)
    else:
        res = run_torch(args.models, args.device, args.batch, args.steps, args.warmup, args.threads,
                        args.torch_format)
    print("RESULT " + json.dumps(res), flush=True)


def spawn(side, model, device, batch, steps, warmup, threads, profile, fmt):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", side, "--models", model, "--device", device,
           "--batch", str(batch), "--steps", str(steps), "--warmup", str(warmup), "--threads", str(threads),
           "--torch-format", fmt] + (["--profile"] if profile else [])
    p = subprocess.run(cmd, capture_output=True, text=True)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    sys.stderr.write(p.stdout[-2000:] + p.stderr[-4000:])
    raise RuntimeError(f"bench_train: the {side} worker for {model} failed (exit {p.returncode})")


def machine_info(device):
    info = dict(platform=platform.platform(), cores=os.cpu_count())
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                info["cpu"] = line.split(":", 1)[1].strip()
        flags = open("/proc/cpuinfo").read()
        info["simd"] = "avx512" if "avx512f" in flags else ("avx2" if "avx2" in flags else "other")
    except OSError:
        pass
    try:
        info["loadavg"] = os.getloadavg()
    except OSError:
        pass
    return info


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda:N")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated: owt, 2012, small")
    ap.add_argument("--batch", type=int, default=None,
                    help=f"default: {GPU_BATCH} on a GPU; on the CPU {CPU_BATCH}")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 10 CPU, 30 GPU)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch twin")
    ap.add_argument("--torch-format", default="auto", choices=("auto", "nchw", "channels_last"))
    ap.add_argument("--profile", action="store_true", help="also time each of our layers (forward, backward)")
    ap.add_argument("--json", default=None, help="where to write results (default benchmarks/results/...)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)

    import convnet
    device = args.device
    if device not in convnet.devices():
        ap.error(f"device {device!r} not available here (have {convnet.devices()})")
    on_gpu = device.startswith("cuda")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        if m not in MODELS:
            ap.error(f"unknown model {m!r}; choose from {', '.join(MODELS)}")
    steps = args.steps or (30 if on_gpu else 10)
    threads = convnet.build_info().get("cpu_threads") or os.cpu_count()
    have_torch = False
    if not args.no_torch:
        have_torch = import_torch() is not None
    info = machine_info(device)
    print(f"train-step benchmark: device {device}, {threads} CPU threads, {info.get('cpu', '?')} "
          f"({info.get('cores')} cores, {info.get('simd')}), load {info.get('loadavg')}, "
          f"median of {steps} steps after {args.warmup} warm-up, torch {'yes' if have_torch else 'absent'}")
    header = (f"{'model':<6} {'batch':>5} {'ours img/s':>10} {'ours ms':>9} {'GFLOP/s':>8} {'peak MB':>8} "
              f"{'torch img/s':>11} {'torch ms':>9} {'peak MB':>8} {'format':>13} {SPEEDUP_HEADER:>10}")
    print(header)
    print("-" * len(header))
    rows = []
    for m in models:
        batch = args.batch or (GPU_BATCH if on_gpu else CPU_BATCH[m])
        mine = spawn("ours", m, device, batch, steps, args.warmup, threads, args.profile, args.torch_format)
        t_ours = statistics.median(mine["times"])
        row = dict(model=m, batch=batch, ours_ms=t_ours * 1e3, ours_img_s=batch / t_ours,
                   ours_gflops=mine["flops_per_image"] * batch / t_ours / 1e9, ours_peak_mb=mine["peak_mem_mb"],
                   ours_base_mb=mine.get("base_mem_mb"), ours_times=mine["times"], ours_loss=mine["loss"],
                   params=mine["params"], flops_per_image=mine["flops_per_image"], mem_note=mine["mem_note"])
        line = (f"{m:<6} {batch:>5} {row['ours_img_s']:>10.1f} {row['ours_ms']:>9.1f} {row['ours_gflops']:>8.1f} "
                f"{row['ours_peak_mb']:>8.0f}")
        if have_torch:
            ref = spawn("torch", m, device, batch, steps, args.warmup, threads, False, args.torch_format)
            t_ref = statistics.median(ref["times"])
            row.update(torch_ms=t_ref * 1e3, torch_img_s=batch / t_ref, torch_peak_mb=ref["peak_mem_mb"],
                       torch_base_mb=ref.get("base_mem_mb"), torch_format=ref["format"],
                       torch_format_trial_s=ref["format_trial_s"], torch_times=ref["times"],
                       torch_version=ref["torch"], torch_loss=ref["loss"], speedup=speedup(t_ref, t_ours))
            line += (f" {row['torch_img_s']:>11.1f} {row['torch_ms']:>9.1f} {row['torch_peak_mb']:>8.0f} "
                     f"{row['torch_format']:>13} {row['speedup']:>10.2f}")
        print(line, flush=True)
        if args.profile and "profile" in mine:
            prof = mine["profile"]
            row["profile"] = prof
            total = sum(r["ms"] for r in prof["rows"])
            print(f"  profile (ours, median of 3 steps): step {prof['step_ms']:.1f} ms, layers+update "
                  f"{total:.1f} ms, rest (Python, glue) {prof['step_ms'] - total:.1f} ms")
            for r in sorted(prof["rows"], key=lambda r: -r["ms"]):
                if r["ms"] >= 0.01 * prof["step_ms"]:
                    print(f"    {r['layer']:<10} {r['type']:<8} {r['pass_']:<8} {r['ms']:8.1f} ms "
                          f"{100 * r['ms'] / prof['step_ms']:5.1f} %")
        rows.append(row)
    print((SPEEDUP_LEGEND + ". " if have_torch else "") + "Peak MB: "
          + ("process peak RSS (separate processes)" if not on_gpu else "device memory (see --help)"))
    path = args.json or os.path.join(HERE, "results", f"bench_train-{device.replace(':', '')}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(dict(device=device, steps=steps, warmup=args.warmup, threads=threads, machine=info,
                       build=convnet.build_info(), results=rows), f, indent=1, default=str)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
