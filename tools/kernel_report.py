#!/usr/bin/env python3
"""What the compiler makes of the CUDA kernels, without a GPU.

Compiles every cuda/*.cu for one architecture (sm_90 by default) with the project's nvcc flags
(CMakeLists.txt: -O3 --expt-relaxed-constexpr -lineinfo), and prints per kernel:

  * registers, spill stores/loads, stack frame, static shared memory (``ptxas -v``);
  * theoretical occupancy on H100 (64K registers, 228 KB shared memory, 2048 threads and 32 blocks
    per SM; registers allocated per warp in units of 256, 1 KB of shared memory reserved per block);
  * for the kernels whose names contain ``conv`` or ``gemm``, the instruction mix of the main loop
    (``cuobjdump -sass``): the backward branch whose body holds the most FFMA + HMMA. Counts are
    static, over the loop body: FFMA and HMMA (tensor-core mma) shares of all instructions (NOPs
    excluded), LDSM (ldmatrix), LDS / LDG / STS by width,
    integer-division sequences (an ``I2F*.RP`` starts each inlined one; a ``CALL`` is a 64-bit
    division or other subroutine), local-memory traffic (LDL / STL) and cp.async (LDGSTS).

With ``--model`` it adds a per-layer time model for AlexNet-2012 and OWT (one weird trick) at a
batch (default 128): compute time = FLOPs / (peak x FFMA share of the kernel that runs the pass),
memory time = compulsory bytes / bandwidth, modelled time = the larger; the compute time is divided
by the tile fill too (the useful share of cuda/conv.cu's 128 x 128 block tiles: Kg = 96 fills 75 %,
Cg = 3 fills 2 %). The FFMA share is the best
the issue slots allow (one warp instruction per scheduler per clock; every non-FFMA takes a slot);
stalls, occupancy and wave tails come on top, so the model is optimistic. cuDNN's times are
estimates (see CUDNN_EFFICIENCY), not measurements.

The model adds cuda/winograd.cu's kernels on the stride-1 3x3 and 5x5 layers (winograd_model): the FMAs
the Winograd kernels actually issue (their block tiles' padding included) at the issue rate their main
loop allows, against our direct kernels' model and cuDNN's FP32 estimates (implicit GEMM as above, and
its Winograd: the same transform-domain FMAs at CUDNN_EFFICIENCY).

The model adds the FC layers under tf32 / bf16 (cuda/gemm_tc.cu's tensor-core kernels) against
cuDNN/cuBLAS TF32 / BF16 estimates (see tc_model for its assumptions), and the conv layers under
tf32 / bf16 (cuda/conv_tc.cu) against cuDNN's TF32 / BF16 estimates (tc_conv_model).

Needs nvcc on PATH and cuobjdump + nvdisasm (``pip install nvidia-cuda-cuobjdump
nvidia-cuda-nvdisasm``: the script looks in site-packages/nvidia/*/bin too).

    python tools/kernel_report.py                    # table
    python tools/kernel_report.py --model --markdown # table + time model, as Markdown
    python tools/kernel_report.py --json out.json
"""
import argparse
import glob
import json
import math
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The flags CMakeLists.txt gives nvcc (CMAKE_BUILD_TYPE Release adds -O3), minus warnings.
NVCC_FLAGS = ["-O3", "--expt-relaxed-constexpr", "-lineinfo", "-DCONVNET_WITH_CUDA=1"]

# H100 SXM5 per SM (CUDA C++ Programming Guide, "Technical Specifications per Compute Capability", 9.0)
SM_REGS, SM_SMEM, SM_THREADS, SM_BLOCKS, SMEM_RESERVED = 65536, 228 * 1024, 2048, 32, 1024
PEAK_FP32 = 66.9e12   # H100 SXM5 FP32 non-tensor (NVIDIA H100 datasheet)
BANDWIDTH = 3.35e12   # H100 SXM5 HBM3
# cuDNN strict FP32 (no TF32) as a fraction of FP32 peak. An ESTIMATE, not a measurement: CUTLASS's
# SIMT SGEMM, the class cuDNN's FP32 implicit-GEMM kernels belong to, is reported at ~80-90 % of
# FP32 peak on large square GEMMs (CUTLASS README / "CUTLASS: Fast Linear Algebra in CUDA C++",
# NVIDIA blog 2017); implicit-GEMM conv loses some to the gather, and conv1 (C = 3, stride 4) much
# more. Replace with bench_conv.py's torch column once a GPU has run it.
CUDNN_EFFICIENCY = {"conv1": 0.45, "conv": 0.70, "fc": 0.80}

# Tensor cores, H100 SXM5 dense (NVIDIA H100 datasheet; the sparse figures are twice these).
PEAK_TC = {"tf32": 494.7e12, "bf16": 989.4e12}
# Cycles of one SM sub-partition's tensor core per HMMA at that peak: 132 SMs x 4 sub-partitions x
# 1.83 GHz x 4 cycles x (1024 FMA of m16n8k8 TF32 | 2048 FMA of m16n8k16 BF16) = the peak; the
# same 4 cycles for both shapes.
HMMA_CYCLES = 4
# The fraction of that peak Hopper reaches through warp-level mma.sync (the sm_80 instruction our
# kernels use): the full rate needs the warpgroup wgmma. An ESTIMATE: about half is the figure
# commonly reported (e.g. the Hopper microbenchmark studies, arXiv 2402.13499 / 2501.12084); replace
# it with a measurement once a GPU has run bench_gemm.py under tf32 / bf16.
MMA_SYNC_FRACTION = 0.5
# cuBLAS/cuDNN TF32 / BF16 GEMM (wgmma) as a fraction of the dense tensor peak on the FC shapes:
# an ESTIMATE, not a measurement (large-GEMM BF16 figures of ~70-80 % of peak are what cuBLAS is
# usually quoted at; M = 128 is not large).
CUDNN_TC_EFFICIENCY = 0.70
# Bytes per element each side reads and writes. Ours: FP32 master data, converted while staged.
# cuDNN TF32 takes FP32 operands; BF16 (a framework's autocast) BF16 operands and outputs, plus a
# cast of the FP32 weights to BF16 once per step (4 B read + 2 B written per weight), counted in
# the per-step totals, not in the passes.
TC_BYTES = {"ours": 4, "tf32": 4, "bf16": 2}
# cuDNN's TF32 / BF16 implicit-GEMM convolutions (wgmma) as a fraction of the dense tensor peak: an
# ESTIMATE, not a measurement, a little under the GEMM's CUDNN_TC_EFFICIENCY for the gather, and much
# less for conv1 (C = 3 is padded to the tensor cores' k granule: 3 of 4 (TF32) / 8 (BF16) channels
# do work, and stride 4 defeats the reuse). Replace with bench_conv.py's torch column under
# torch.backends.cudnn.allow_tf32 / autocast once a GPU has run it.
CUDNN_TC_CONV_EFFICIENCY = {"conv1": 0.30, "conv": 0.60}
TC_TILE = 128  # cuda/conv_tc.cu's block tile of C (M x N)


# --- compile and parse --------------------------------------------------------------------------

def find_tool(name):
    path = shutil.which(name)
    if path:
        return path
    for base in [sysconfig.get_paths()["purelib"]] + sys.path:
        hits = glob.glob(os.path.join(base, "nvidia", "*", "bin", name))
        if hits:
            return hits[0]
    return None


def demangle(names):
    cxxfilt = shutil.which("c++filt")
    if not cxxfilt or not names:
        return {n: n for n in names}
    out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True).stdout
    return dict(zip(names, out.splitlines()))


def short_name(demangled):
    """'void convnet::cuda::(anonymous namespace)::gemm_kernel<true, false>(Params)' -> 'gemm_kernel<true, false>'"""
    name = re.sub(r"^void\s+", "", demangled.replace("(anonymous namespace)::", ""))
    # enum template arguments demangle as casts: "(convnet::Precision)1" -> "tf32"
    name = name.replace("(convnet::Precision)1", "tf32").replace("(convnet::Precision)2", "bf16")
    name = name.split("(")[0]
    head, _, args = name.partition("<")
    return head.split("::")[-1] + ("<" + args if args else "")


def compile_file(cu, arch, workdir):
    cubin = os.path.join(workdir, os.path.basename(cu) + ".cubin")
    cmd = ["nvcc", "-cubin", f"-arch=sm_{arch}", *NVCC_FLAGS, "-Xptxas", "-v",
           "-I", os.path.join(ROOT, "cuda"), "-I", os.path.join(ROOT, "csrc"), "-o", cubin, cu]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"nvcc failed on {cu}:\n{res.stderr}")
    return cubin, res.stderr


def parse_ptxas(text):
    kernels, current = {}, None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '([^']+)'", line)
        if m:
            current = kernels.setdefault(m.group(1), {"regs": 0, "spill_st": 0, "spill_ld": 0,
                                                      "stack": 0, "smem": 0})
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            current["stack"], current["spill_st"], current["spill_ld"] = map(int, m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m:
            current["regs"] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            current["smem"] = int(s.group(1)) if s else 0
    return kernels


def parse_max_threads(cuobjdump, cubin):
    """EIATTR_MAX_THREADS (from __launch_bounds__) per mangled kernel name."""
    out = subprocess.run([cuobjdump, "-elf", cubin], capture_output=True, text=True).stdout
    result, section, attr = {}, None, None
    for line in out.splitlines():
        m = re.match(r"^\.nv\.info\.(\S+)", line)
        if m:
            section, attr = m.group(1), None
            continue
        a = re.search(r"Attribute:\s+(\S+)", line)
        if a:
            attr = a.group(1)
            continue
        m = re.search(r"Value:\s+0x([0-9a-f]+) 0x([0-9a-f]+) 0x([0-9a-f]+)", line)
        if m and section and attr == "EIATTR_MAX_THREADS":
            result[section] = int(m.group(1), 16) * int(m.group(2), 16) * int(m.group(3), 16)
    return result


def parse_sass(cuobjdump, cubin):
    """{mangled name: [(address, opcode, full text)]}"""
    out = subprocess.run([cuobjdump, "-sass", cubin], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"cuobjdump -sass failed (is nvdisasm installed?):\n{out.stderr}")
    funcs, cur = {}, None
    for line in out.stdout.splitlines():
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            cur = funcs.setdefault(m.group(1), [])
            continue
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if m and cur is not None:
            text = m.group(2).strip()
            parts = text.split()
            op = parts[1] if parts[0].startswith("@") else parts[0]
            cur.append((int(m.group(1), 16), op, text))
    return funcs


def main_loop(instrs):
    """The loop (a backward branch and its target) whose body holds the most FFMA + HMMA."""
    best = None
    for i, (addr, op, text) in enumerate(instrs):
        if not op.startswith("BRA"):
            continue
        m = re.search(r"BRA\s+(?:`\(\.L_x_\d+\)|0x([0-9a-f]+))", text)
        if not m or m.group(1) is None:
            continue
        target = int(m.group(1), 16)
        if target > addr:
            continue
        body = [ins for ins in instrs if target <= ins[0] <= addr]
        ffma = sum(1 for ins in body if ins[1].startswith(("FFMA", "HMMA")))
        if ffma and (best is None or ffma > best[0] or (ffma == best[0] and len(body) < len(best[1]))):
            best = (ffma, body, target, addr)
    return best


def width(op):
    parts = op.split(".")
    for w in ("128", "64"):
        if w in parts:
            return w
    return "32"


def mix(body):
    ops = [op for _, op, _ in body if not op.startswith("NOP")]
    m = {"instr": len(ops), "ffma": sum(op.startswith("FFMA") for op in ops),
         "hmma": sum(op.startswith("HMMA") for op in ops), "ldsm": sum(op.startswith("LDSM") for op in ops)}
    for kind in ("LDS", "LDG", "STS", "STG"):
        widths = {}
        for op in ops:
            if op.split(".")[0] == kind:
                widths[width(op)] = widths.get(width(op), 0) + 1
        m[kind.lower()] = widths
    m["ldgsts"] = sum(op.startswith("LDGSTS") for op in ops)
    m["local"] = sum(op.split(".")[0] in ("LDL", "STL") for op in ops)
    m["div"] = sum(op.startswith("I2F") and ".RP" in op for op in ops)
    m["call"] = sum(op.startswith("CALL") for op in ops)
    m["bar"] = sum(op.startswith("BAR") for op in ops)
    m["ffma_share"] = m["ffma"] / m["instr"] if m["instr"] else 0.0
    m["hmma_share"] = m["hmma"] / m["instr"] if m["instr"] else 0.0
    return m


def occupancy(regs, smem, threads):
    warps = math.ceil(threads / 32)
    regs_per_warp = math.ceil(max(regs, 1) * 32 / 256) * 256
    by_regs = (SM_REGS // regs_per_warp) // warps
    by_smem = SM_SMEM // (smem + SMEM_RESERVED)
    by_threads = SM_THREADS // (warps * 32)
    blocks = min(by_regs, by_smem, by_threads, SM_BLOCKS)
    limiter = min((by_regs, "regs"), (by_smem, "smem"), (by_threads, "threads"), (SM_BLOCKS, "blocks"))[1]
    return blocks, blocks * warps, limiter


def report(arch, files):
    cuobjdump = find_tool("cuobjdump")
    nvdisasm = find_tool("nvdisasm")
    if not cuobjdump or not nvdisasm:
        raise SystemExit("needs cuobjdump and nvdisasm: pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm")
    os.environ["PATH"] = os.path.dirname(nvdisasm) + os.pathsep + os.environ["PATH"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for cu in files:
            cubin, log = compile_file(cu, arch, tmp)
            kernels = parse_ptxas(log)
            threads = parse_max_threads(cuobjdump, cubin)
            sass = parse_sass(cuobjdump, cubin)
            names = demangle(list(kernels))
            for mangled, k in kernels.items():
                name = short_name(names[mangled])
                t = threads.get(mangled)
                row = dict(file=os.path.basename(cu), kernel=name, mangled=mangled, threads=t, **k)
                row["blocks_per_sm"], row["warps_per_sm"], row["limiter"] = occupancy(k["regs"], k["smem"], t or 256)
                if ("conv" in name or "gemm" in name) and mangled in sass:
                    loop = main_loop(sass[mangled])
                    if loop:
                        row["main_loop"] = mix(loop[1])
                        row["main_loop"]["range"] = f"0x{loop[2]:x}-0x{loop[3]:x}"
                rows.append(row)
    return rows


def fmt_widths(w):
    return " ".join(f"{n}x{b}" for b, n in sorted(w.items(), key=lambda kv: -int(kv[0]))) or "-"


def print_rows(head, lines, md):
    """A table: markdown rows (md; a "|" inside a cell becomes "/") or columns padded to their widest cell."""
    if md:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for l in lines:
            print("| " + " | ".join(x.replace("|", "/") for x in l) + " |")
    else:
        w = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(head)]
        print("  ".join(h.ljust(w[i]) for i, h in enumerate(head)))
        for l in lines:
            print("  ".join(x.ljust(w[i]) for i, x in enumerate(l)))


def print_table(rows, md):
    head = ["file", "kernel", "thr", "regs", "spill st/ld", "smem B", "blocks/SM (warps)", "limit",
            "FFMA share", "HMMA share", "instr", "LDSM", "LDS", "LDG", "STS", "cp.async", "div", "call", "local"]
    lines = []
    for r in rows:
        m = r.get("main_loop")
        lines.append([r["file"], r["kernel"], str(r["threads"] or "256?"), str(r["regs"]),
                      f"{r['spill_st']}/{r['spill_ld']}", str(r["smem"]),
                      f"{r['blocks_per_sm']} ({r['warps_per_sm']})", r["limiter"],
                      f"{100 * m['ffma_share']:.0f} %" if m else "",
                      f"{100 * m['hmma_share']:.0f} % ({m['hmma']})" if m and m["hmma"] else "",
                      str(m["instr"]) if m else "", str(m["ldsm"]) if m and m["ldsm"] else "",
                      fmt_widths(m["lds"]) if m else "", fmt_widths(m["ldg"]) if m else "",
                      fmt_widths(m["sts"]) if m else "", str(m["ldgsts"]) if m else "",
                      str(m["div"]) if m else "", str(m["call"]) if m else "", str(m["local"]) if m else ""])
    print_rows(head, lines, md)


# --- time model -----------------------------------------------------------------------------------

# (H, W, C, K, R, S, stride, pad, groups), as benchmarks/bench_conv.py
CONV_LAYERS = {
    "2012.conv1": (227, 227, 3, 96, 11, 11, 4, 0, 1),
    "2012.conv2": (27, 27, 96, 256, 5, 5, 1, 2, 2),
    "2012.conv3": (13, 13, 256, 384, 3, 3, 1, 1, 1),
    "2012.conv4": (13, 13, 384, 384, 3, 3, 1, 1, 2),
    "2012.conv5": (13, 13, 384, 256, 3, 3, 1, 1, 2),
    "owt.conv1": (224, 224, 3, 64, 11, 11, 4, 2, 1),
    "owt.conv2": (27, 27, 64, 192, 5, 5, 1, 2, 1),
    "owt.conv3": (13, 13, 192, 384, 3, 3, 1, 1, 1),
    "owt.conv4": (13, 13, 384, 256, 3, 3, 1, 1, 1),
    "owt.conv5": (13, 13, 256, 256, 3, 3, 1, 1, 1),
}
FC_LAYERS = {"fc6": (9216, 4096), "fc7": (4096, 4096), "fc8": (4096, 1000)}


def kernel_share(rows, prefix):
    shares = [r["main_loop"]["ffma_share"] for r in rows if r["kernel"].startswith(prefix) and "main_loop" in r]
    return min(shares) if shares else None


def conv_kernel_share(rows, pass_, C, K, g):
    """The FFMA share of the instantiation cuda/conv.cu launches for this layer and pass (its copy
    widths follow the channel counts: <true> = 16-byte gathers), else the worst of the pass's kernels."""
    Cg, Kg = C // g, K // g
    vec = lambda b: "true" if b else "false"  # noqa: E731
    exact = {"fwd": f"conv_forward_kernel<{vec(Cg % 4 == 0 and C % 4 == 0)}>",
             # backward data runs the forward kernel over dy (K channels, Kg a group)
             "bwd_data": f"conv_forward_kernel<{vec(Kg % 4 == 0 and K % 4 == 0)}>",
             "bwd_filter": f"conv_backward_filter_kernel<{vec(Kg % 4 == 0 and K % 4 == 0)}, "
                           f"{vec(Cg % 4 == 0 and C % 4 == 0)}>"}[pass_]
    for r in rows:
        if r["kernel"] == exact and "main_loop" in r:
            return r["main_loop"]["ffma_share"]
    # the FP32 kernels only, not the tensor-core ones (conv_*_tc_kernel)
    prefix = {"fwd": "conv_forward_kernel", "bwd_data": "conv_forward_kernel",
              "bwd_filter": "conv_backward_filter_kernel"}[pass_]
    return kernel_share(rows, prefix)


TILE = 128  # cuda/conv.cu's block tile


def fill(n):
    """The useful share of the 128-wide tiles that cover a GEMM dimension of n."""
    return n / (math.ceil(n / TILE) * TILE)


def time_model(rows, batch):
    fc_share = kernel_share(rows, "gemm_kernel")
    out = []
    for name, (H, W, C, K, R, S, st, pd, g) in CONV_LAYERS.items():
        P, Q = (H + 2 * pd - R) // st + 1, (W + 2 * pd - S) // st + 1
        flops = 2.0 * batch * P * Q * K * R * S * (C // g)
        x, y, w = 4.0 * batch * H * W * C, 4.0 * batch * P * Q * K, 4.0 * K * R * S * (C // g)
        eff = CUDNN_EFFICIENCY["conv1" if name.endswith("conv1") else "conv"]
        Cg, Kg, RSC = C // g, K // g, R * S * (C // g)
        # the share of each 128 x 128 block tile that is inside the GEMM (rows are pixels: ~1)
        tile = {"fwd": fill(Kg), "bwd_data": fill(Cg), "bwd_filter": fill(Kg) * fill(RSC)}
        for pass_, bytes_ in (("fwd", x + w + y), ("bwd_data", y + w + x), ("bwd_filter", x + y + w)):
            out.append(model_row(name, pass_, flops, bytes_, conv_kernel_share(rows, pass_, C, K, g), eff,
                                 tile[pass_]))
    for name, (cin, cout) in FC_LAYERS.items():
        flops = 2.0 * batch * cin * cout
        bytes_ = 4.0 * (batch * cin + cin * cout + batch * cout)
        for pass_ in ("fwd", "bwd_data", "bwd_filter"):
            out.append(model_row(name, pass_, flops, bytes_, fc_share, CUDNN_EFFICIENCY["fc"]))
    return out


def model_row(layer, pass_, flops, bytes_, share, cudnn_eff, tile=1.0):
    """tile: the useful share of the FFMA the block tiles issue (padding columns cost issue slots too)."""
    t_mem = bytes_ / BANDWIDTH
    t_ours = max(flops / (PEAK_FP32 * share * tile), t_mem) if share else None
    t_cudnn = max(flops / (PEAK_FP32 * cudnn_eff), t_mem)
    return dict(layer=layer, pass_=pass_, gflop=flops / 1e9, mbytes=bytes_ / 1e6, ffma_share=share, tile=tile,
                ours_ms=t_ours * 1e3 if t_ours else None, cudnn_est_ms=t_cudnn * 1e3,
                ratio=t_ours / t_cudnn if t_ours else None)


def padded(n, tile):
    return math.ceil(n / tile) * tile


def winograd_fmas(layer, batch):
    """{pass: (direct FMAs, Winograd FMAs)} as issued by cuda/conv.cu's and cuda/winograd.cu's block
    tiles (direct 64 x 64 x 16; Winograd 36 points x 16 x 32 x 4), all groups; the formula of
    cuda::winograd_chosen (cuda/winograd.cu), which applies this model per call."""
    H, W, C, K, R, S, st, pd, g = CONV_LAYERS[layer]
    P, Q = (H + 2 * pd - R) // st + 1, (W + 2 * pd - S) // st + 1
    m, Cg, Kg = 6 - R + 1, C // g, K // g
    tiles_out = batch * math.ceil(P / m) * math.ceil(Q / m)
    tiles_in = batch * math.ceil(H / m) * math.ceil(W / m)
    return {
        "fwd": (g * padded(batch * P * Q, 64) * padded(Kg, 64) * padded(R * S * Cg, 16),
                g * 36 * padded(tiles_out, 16) * padded(Kg, 32) * padded(Cg, 4)),
        "bwd_data": (g * padded(batch * H * W, 64) * padded(Cg, 64) * padded(R * S * Kg, 16),
                     g * 36 * padded(tiles_in, 16) * padded(Cg, 32) * padded(Kg, 4)),
        "bwd_filter": (g * padded(Kg, 64) * padded(R * S * Cg, 64) * padded(batch * P * Q, 16),
                       g * 36 * padded(Kg, 16) * padded(Cg, 32) * padded(tiles_out, 4)),
    }


def winograd_model(rows, batch):
    """Per stride-1 3x3 / 5x5 layer and pass: our Winograd kernels' modelled time (issued FMAs x 2 /
    (peak x FFMA share of the kernel's main loop)), against our direct kernels' (the same rule) and
    cuDNN's FP32 estimates: implicit GEMM (the direct FLOPs at CUDNN_EFFICIENCY) and Winograd (the same
    transform-domain FLOPs as ours, unpadded, at CUDNN_EFFICIENCY: an ESTIMATE, generous to cuDNN, whose
    transforms it leaves out); cuDNN's time is the better of the two. Memory: compulsory bytes (x, y, w)
    plus Winograd's U (36 K Cg floats, written once, read by every block column: from L2, not counted)
    at BANDWIDTH; each time is the larger of compute and memory."""
    share = {"fwd": kernel_share(rows, "winograd_conv_forward"),
             "bwd_data": kernel_share(rows, "winograd_conv_forward"),
             "bwd_filter": kernel_share(rows, "winograd_conv_backward_filter")}
    direct = {"fwd": kernel_share(rows, "conv_forward"), "bwd_data": kernel_share(rows, "conv_backward_data"),
              "bwd_filter": kernel_share(rows, "conv_backward_filter")}
    out = []
    for name, (H, W, C, K, R, S, st, pd, g) in CONV_LAYERS.items():
        if st != 1 or R != S or R not in (3, 5):
            continue
        P, Q = (H + 2 * pd - R) // st + 1, (W + 2 * pd - S) // st + 1
        m = 6 - R + 1
        direct_flops = 2.0 * batch * P * Q * K * R * S * (C // g)
        bytes_ = 4.0 * (batch * H * W * C + batch * P * Q * K + K * R * S * (C // g)) + 4.0 * 2 * 36 * K * (C // g)
        t_mem = bytes_ / BANDWIDTH
        for pass_, (d_fma, w_fma) in winograd_fmas(name, batch).items():
            side = (P, Q) if pass_ != "bwd_data" else (H, W)
            wino_flops = 2.0 * 36 * batch * math.ceil(side[0] / m) * math.ceil(side[1] / m) * K * (C // g)
            t_w = max(2.0 * w_fma / (PEAK_FP32 * share[pass_]), t_mem) if share[pass_] else None
            t_d = max(2.0 * d_fma / (PEAK_FP32 * direct[pass_]), t_mem) if direct[pass_] else None
            eff = CUDNN_EFFICIENCY["conv"]
            t_cudnn_gemm = max(direct_flops / (PEAK_FP32 * eff), t_mem)
            t_cudnn_wino = max(wino_flops / (PEAK_FP32 * eff), t_mem)
            t_cudnn = min(t_cudnn_gemm, t_cudnn_wino)
            out.append(dict(layer=name, pass_=pass_, direct_gflop=direct_flops / 1e9, issued_gflop=2.0 * w_fma / 1e9,
                            ffma_share=share[pass_], winograd_ms=t_w * 1e3 if t_w else None,
                            direct_ms=t_d * 1e3 if t_d else None, cudnn_gemm_ms=t_cudnn_gemm * 1e3,
                            cudnn_winograd_ms=t_cudnn_wino * 1e3,
                            vs_direct=t_w / t_d if t_w and t_d else None,
                            vs_cudnn=t_w / t_cudnn if t_w else None))
    return out


def print_winograd_model(model, md, batch):
    head = ["layer", "pass", "direct GFLOP", "Winograd GFLOP issued", "FFMA share", "Winograd ms", "our direct ms",
            "cuDNN GEMM est. ms", "cuDNN Winograd est. ms", "Winograd / our direct", "Winograd / cuDNN best"]
    f = lambda v, d=3: f"{v:.{d}f}" if v is not None else "?"
    lines = [[m["layer"], m["pass_"], f(m["direct_gflop"], 1), f(m["issued_gflop"], 1),
              f"{100 * m['ffma_share']:.0f} %" if m["ffma_share"] else "?", f(m["winograd_ms"]), f(m["direct_ms"]),
              f(m["cudnn_gemm_ms"]), f(m["cudnn_winograd_ms"]), f(m["vs_direct"], 2), f(m["vs_cudnn"], 2)]
             for m in model]
    print(f"\nWinograd model (cuda/winograd.cu), batch {batch}, H100 SXM5 (FP32 {PEAK_FP32 / 1e12:.1f} TFLOP/s); "
          f"cuDNN at {100 * CUDNN_EFFICIENCY['conv']:.0f} % of peak (estimate)")
    if md:
        print()
    print_rows(head, lines, md)


def tc_efficiency(m):
    """Fraction of the dense tensor peak a main loop allows: the tensor core needs HMMA_CYCLES /
    MMA_SYNC_FRACTION cycles per HMMA, the scheduler one issue slot per instruction (static count,
    both sides of the loop's branches included: pessimistic); the larger bounds the loop."""
    if not m or not m["hmma"]:
        return None
    return HMMA_CYCLES * m["hmma"] / max(m["instr"], HMMA_CYCLES * m["hmma"] / MMA_SYNC_FRACTION)


def tc_model(rows, batch):
    """The FC layers under tf32 / bf16: ours = cuda/gemm_tc.cu (the worst instantiation of that
    precision), cuDNN = CUDNN_TC_EFFICIENCY
    of the dense peak; each the larger of compute and compulsory-memory time (TC_BYTES)."""
    out = []
    for prec in ("tf32", "bf16"):
        effs = [tc_efficiency(r.get("main_loop")) for r in rows
                if r["kernel"].startswith("gemm_tc_kernel<" + prec)]
        effs = [e for e in effs if e]
        eff = min(effs) if effs else None
        for name, (cin, cout) in FC_LAYERS.items():
            flops = 2.0 * batch * cin * cout
            elems = batch * cin + cin * cout + batch * cout
            for pass_ in ("fwd", "bwd_data", "bwd_filter"):
                t_mem = TC_BYTES["ours"] * elems / BANDWIDTH
                t_ours = max(flops / (PEAK_TC[prec] * eff), t_mem) if eff else None
                t_cudnn = max(flops / (PEAK_TC[prec] * CUDNN_TC_EFFICIENCY), TC_BYTES[prec] * elems / BANDWIDTH)
                out.append(dict(precision=prec, layer=name, pass_=pass_, gflop=flops / 1e9,
                                mbytes=TC_BYTES["ours"] * elems / 1e6, tc_eff=eff,
                                bound="memory" if t_ours and t_mem >= t_ours else "compute",
                                ours_ms=t_ours * 1e3 if t_ours else None, cudnn_est_ms=t_cudnn * 1e3,
                                ratio=t_ours / t_cudnn if t_ours else None))
    return out


def conv_tc_kernel(prec, pass_, C, K, R, S, st, g):
    """The cuda/conv_tc.cu instantiation that runs this layer's pass (its launchers' choice)."""
    group = 4 if prec == "tf32" else 8  # floats per loader group (Tc<P>::kGroup)
    cg, kg = C // g, K // g
    if pass_ == "fwd":
        return f"conv_forward_tc_kernel<{prec}, {str(cg % group == 0).lower()}>"
    if pass_ == "bwd_data":
        return (f"conv_backward_data_tc_kernel<{prec}, {str(kg % group == 0).lower()}, "
                f"{str(st == 1).lower()}>")
    return f"conv_backward_filter_tc_kernel<{prec}, {str(cg % 4 == 0).lower()}>"


def tile_fill(m, n):
    """The share of the 128 x 128 block tiles that holds real rows and columns."""
    return (m / (math.ceil(m / TC_TILE) * TC_TILE)) * (n / (math.ceil(n / TC_TILE) * TC_TILE))


def tc_conv_model(rows, batch):
    """The conv layers under tf32 / bf16: ours = the cuda/conv_tc.cu kernel that runs the pass, at
    tc_efficiency(its main loop) x the fill of its 128 x 128 tiles (GEMM M, N: forward N*P*Q x Kg,
    backward data N*H*W x Cg, backward filter Kg x R*S*Cg); cuDNN = CUDNN_TC_CONV_EFFICIENCY of the
    dense peak. Each the larger of compute and compulsory-memory time (x, w, y once each; ours FP32,
    cuDNN TF32 FP32 and BF16 2 bytes). Wave tails, the regroup and split-K passes are not counted."""
    by_name = {r["kernel"]: r for r in rows}
    out = []
    for prec in ("tf32", "bf16"):
        for name, (H, W, C, K, R, S, st, pd, g) in CONV_LAYERS.items():
            P, Q = (H + 2 * pd - R) // st + 1, (W + 2 * pd - S) // st + 1
            flops = 2.0 * batch * P * Q * K * R * S * (C // g)
            elems = batch * H * W * C + batch * P * Q * K + K * R * S * (C // g)
            gemm = {"fwd": (batch * P * Q, K // g), "bwd_data": (batch * H * W, C // g),
                    "bwd_filter": (K // g, R * S * (C // g))}
            cudnn_eff = CUDNN_TC_CONV_EFFICIENCY["conv1" if name.endswith("conv1") else "conv"]
            for pass_ in ("fwd", "bwd_data", "bwd_filter"):
                kernel = conv_tc_kernel(prec, pass_, C, K, R, S, st, g)
                eff = tc_efficiency(by_name.get(kernel, {}).get("main_loop"))
                fill = tile_fill(*gemm[pass_])
                t_mem = TC_BYTES["ours"] * elems / BANDWIDTH
                t_ours = max(flops / (PEAK_TC[prec] * eff * fill), t_mem) if eff else None
                t_cudnn = max(flops / (PEAK_TC[prec] * cudnn_eff), TC_BYTES[prec] * elems / BANDWIDTH)
                out.append(dict(precision=prec, layer=name, pass_=pass_, kernel=kernel, gflop=flops / 1e9,
                                mbytes=TC_BYTES["ours"] * elems / 1e6, tc_eff=eff, fill=fill,
                                bound="memory" if t_ours and t_mem >= t_ours else "compute",
                                ours_ms=t_ours * 1e3 if t_ours else None, cudnn_est_ms=t_cudnn * 1e3,
                                ratio=t_ours / t_cudnn if t_ours else None))
    return out


def print_tc_conv_model(model, fc_model, md, batch):
    head = ["precision", "layer", "pass", "GFLOP", "TC eff.", "tile fill", "bound", "model ms", "cuDNN est. ms",
            "model / cuDNN"]
    lines = [[m["precision"], m["layer"], m["pass_"], f"{m['gflop']:.1f}",
              f"{100 * m['tc_eff']:.0f} %" if m["tc_eff"] else "?", f"{100 * m['fill']:.0f} %", m["bound"],
              f"{m['ours_ms']:.3f}" if m["ours_ms"] else "?", f"{m['cudnn_est_ms']:.3f}",
              f"{m['ratio']:.2f}" if m["ratio"] else "?"] for m in model]
    print(f"\ntensor-core model (conv layers under tf32 / bf16, cuda/conv_tc.cu), batch {batch}, mma.sync at "
          f"{100 * MMA_SYNC_FRACTION:.0f} % of the dense peak, cuDNN at {100 * CUDNN_TC_CONV_EFFICIENCY['conv']:.0f} % "
          f"(conv1 {100 * CUDNN_TC_CONV_EFFICIENCY['conv1']:.0f} %)")
    if md:
        print()
    print_rows(head, lines, md)
    for prec in ("tf32", "bf16"):
        fc = [m for m in fc_model if m["precision"] == prec]
        fc_ours, fc_cudnn = sum(m["ours_ms"] or 0 for m in fc), sum(m["cudnn_est_ms"] for m in fc)
        for net in ("2012", "owt"):
            # conv1's bwd_data is left out: no net computes the gradient of its input images
            conv = [m for m in model if m["precision"] == prec and m["layer"].startswith(net + ".")
                    and not (m["layer"].endswith("conv1") and m["pass_"] == "bwd_data")]
            if any(m["ours_ms"] is None for m in conv):
                continue
            ours = sum(m["ours_ms"] for m in conv) + fc_ours
            cudnn = sum(m["cudnn_est_ms"] for m in conv) + fc_cudnn
            cast = 0.0
            if prec == "bf16":  # autocast's FP32 -> BF16 copy of each weight, once per step
                weights = sum(6.0 * K * R * S * (C // g) for n, (H, W, C, K, R, S, st, pd, g) in CONV_LAYERS.items()
                              if n.startswith(net + "."))
                cast = (weights + sum(6.0 * cin * cout for cin, cout in FC_LAYERS.values())) / BANDWIDTH * 1e3
            print(f"{prec} {net}: conv + fc, all passes but conv1 bwd_data: model {ours:.2f} ms, cuDNN estimate {cudnn + cast:.2f} ms"
                  + (f" (incl. weight cast {cast:.3f} ms)" if cast else "") + f", ratio {ours / (cudnn + cast):.2f}")


def print_tc_model(model, md, batch):
    head = ["precision", "layer", "pass", "GFLOP", "MB (ours)", "TC eff.", "bound", "model ms", "cuDNN est. ms",
            "model / cuDNN"]
    lines = [[m["precision"], m["layer"], m["pass_"], f"{m['gflop']:.1f}", f"{m['mbytes']:.0f}",
              f"{100 * m['tc_eff']:.0f} %" if m["tc_eff"] else "?", m["bound"],
              f"{m['ours_ms']:.4f}" if m["ours_ms"] else "?", f"{m['cudnn_est_ms']:.4f}",
              f"{m['ratio']:.2f}" if m["ratio"] else "?"] for m in model]
    print(f"\ntensor-core model (FC layers under tf32 / bf16), batch {batch}, H100 SXM5 dense TF32 "
          f"{PEAK_TC['tf32'] / 1e12:.0f} / BF16 {PEAK_TC['bf16'] / 1e12:.0f} TFLOP/s, mma.sync at "
          f"{100 * MMA_SYNC_FRACTION:.0f} % of it, cuDNN at {100 * CUDNN_TC_EFFICIENCY:.0f} %")
    if md:
        print()
    print_rows(head, lines, md)
    for prec in ("tf32", "bf16"):
        rows = [m for m in model if m["precision"] == prec]
        ours = sum(m["ours_ms"] or 0 for m in rows)
        cudnn = sum(m["cudnn_est_ms"] for m in rows)
        cast = 0.0
        if prec == "bf16":  # autocast's FP32 -> BF16 copy of each weight, once per step
            cast = sum(6.0 * cin * cout for cin, cout in FC_LAYERS.values()) / BANDWIDTH * 1e3
        print(f"{prec}: fc6+fc7+fc8, all passes: model {ours:.3f} ms, cuDNN estimate {cudnn:.3f} ms"
              + (f" + weight cast {cast:.3f} ms = {cudnn + cast:.3f} ms" if cast else "")
              + f", ratio {ours / (cudnn + cast):.2f}" if ours else "")


def print_model(model, md, batch):
    head = ["layer", "pass", "GFLOP", "MB", "FFMA share", "tile fill", "model ms", "cuDNN est. ms", "model / cuDNN"]
    lines = [[m["layer"], m["pass_"], f"{m['gflop']:.1f}", f"{m['mbytes']:.0f}",
              f"{100 * m['ffma_share']:.0f} %" if m["ffma_share"] else "?", f"{100 * m['tile']:.0f} %",
              f"{m['ours_ms']:.3f}" if m["ours_ms"] else "?", f"{m['cudnn_est_ms']:.3f}",
              f"{m['ratio']:.2f}" if m["ratio"] else "?"] for m in model]
    print(f"\ntime model, batch {batch}, H100 SXM5 (FP32 {PEAK_FP32 / 1e12:.1f} TFLOP/s, {BANDWIDTH / 1e12:.2f} TB/s)")
    if md:
        print()
    print_rows(head, lines, md)
    for net in ("2012", "owt"):
        rows = [m for m in model if m["layer"].startswith(net + ".") or m["layer"].startswith("fc")]
        ours = sum(m["ours_ms"] or 0 for m in rows)
        cudnn = sum(m["cudnn_est_ms"] for m in rows)
        print(f"{net}: conv+fc, all passes: model {ours:.2f} ms, cuDNN estimate {cudnn:.2f} ms, ratio {ours / cudnn:.2f}")
        # a training step: the Net asks for no gradient of the data, so conv1's backward data never runs
        step = [m for m in rows if not (m["layer"].endswith("conv1") and m["pass_"] == "bwd_data")]
        ours_s = sum(m["ours_ms"] or 0 for m in step)
        cudnn_s = sum(m["cudnn_est_ms"] for m in step)
        print(f"{net}: training step (no conv1 backward data): model {ours_s:.2f} ms, cuDNN estimate "
              f"{cudnn_s:.2f} ms, ratio {ours_s / cudnn_s:.2f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="90")
    ap.add_argument("--files", nargs="*", help="default: every cuda/*.cu")
    ap.add_argument("--model", action="store_true", help="add the per-layer time model")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    files = args.files or sorted(glob.glob(os.path.join(ROOT, "cuda", "*.cu")))
    rows = report(args.arch, files)
    print_table(rows, args.markdown)
    model = time_model(rows, args.batch) if args.model else None
    tc = tc_model(rows, args.batch) if args.model else None
    tc_conv = tc_conv_model(rows, args.batch) if args.model else None
    if model:
        print_model(model, args.markdown, args.batch)
        print_tc_model(tc, args.markdown, args.batch)
        print_tc_conv_model(tc_conv, tc, args.markdown, args.batch)
        wino = winograd_model(rows, args.batch)
        if wino and any(m["winograd_ms"] for m in wino):
            print_winograd_model(wino, args.markdown, args.batch)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"arch": args.arch, "kernels": rows, "model": model, "tc_model": tc, "tc_conv_model": tc_conv,
                       "winograd_model": winograd_model(rows, args.batch) if args.model else None}, f, indent=1)


if __name__ == "__main__":
    main()
