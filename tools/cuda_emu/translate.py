#!/usr/bin/env python3
"""cuda_emu: turn a CUDA source (cuda/*.cu) into C++ that g++ compiles against tools/cuda_emu.

Two rewrites, both keeping line numbers (a `#line` directive points errors and sanitizer reports
back at the .cu file):
  * `kernel<<<grid, block[, smem[, stream]]>>>(args)` (template kernels and launches over several
    lines included) -> `::emu::launch("kernel", ::emu::Cfg(grid, block, ...), kernel, args)`;
  * `__shared__ T name[..];` -> a function-static array plus `::emu::shared_touch(name, sizeof(name))`,
    which poisons it when a block first reaches it (shared memory starts as garbage on a GPU);
    `extern __shared__ T name[];` -> `T* name = (T*)::emu::dynamic_shared();`.

The caching allocator (cuda/runtime/device_runtime.cu) needs no rewrite: it calls the emulator's
allocation hooks through two macros that tools/cuda_emu/cuda_runtime.h defines.

usage: translate.py SRC.cu OUT.cpp
"""
import re
import sys


def find_matching(text, i, open_ch, close_ch):
    """Index of the bracket closing the one at text[i]."""
    depth = 0
    for j in range(i, len(text)):
        if text[j] == open_ch:
            depth += 1
        elif text[j] == close_ch:
            depth -= 1
            if depth == 0:
                return j
    raise SyntaxError(f"unbalanced {open_ch} at offset {i}")


def kernel_expr_start(text, end):
    """Start of the kernel expression ending just before `end` (an identifier, maybe with ::
    qualifiers and a template argument list)."""
    j = end
    while j > 0 and text[j - 1].isspace():
        j -= 1
    if text[j - 1] == ">":  # template arguments: walk back to the matching '<'
        depth = 0
        while True:
            j -= 1
            if text[j] == ">":
                depth += 1
            elif text[j] == "<":
                depth -= 1
                if depth == 0:
                    break
    while j > 0 and (text[j - 1].isalnum() or text[j - 1] in "_:"):
        j -= 1
    return j


def rewrite_launches(text):
    out = []
    pos = 0
    count = 0
    while True:
        i = text.find("<<<", pos)
        if i < 0:
            break
        start = kernel_expr_start(text, i)
        kernel = text[start:i].strip()
        close = text.find(">>>", i)
        cfg = text[i + 3:close]
        k = close + 3
        while text[k].isspace():
            k += 1
        if text[k] != "(":
            raise SyntaxError(f"launch of {kernel}: expected '(' after >>>")
        end = find_matching(text, k, "(", ")")
        args = text[k + 1:end]
        name = re.sub(r"\s+", " ", kernel)
        repl = f'::emu::launch("{name}", ::emu::Cfg({cfg}), {kernel}' + (f", {args})" if args.strip() else ")")
        original = text[start:end + 1]
        repl += "\n" * (original.count("\n") - repl.count("\n"))
        out.append(text[pos:start])
        out.append(repl)
        pos = end + 1
        count += 1
    out.append(text[pos:])
    return "".join(out), count


SHARED_EXTERN = re.compile(r"extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?([\w:]+)\s+(\w+)\s*\[\s*\]\s*;")
SHARED = re.compile(r"__shared__\s+((?:__align__\(\d+\)\s+)?[^;(){}]*?)\b(\w+)\s*((?:\[[^\]]*\]\s*)+);")


def rewrite_shared(text):
    text = SHARED_EXTERN.sub(lambda m: f"{m.group(1)}* {m.group(2)} = "
                             f"reinterpret_cast<{m.group(1)}*>(::emu::dynamic_shared());", text)
    text = SHARED.sub(lambda m: f"static {m.group(1)}{m.group(2)}{m.group(3)}; "
                      f"::emu::shared_touch({m.group(2)}, sizeof({m.group(2)}));", text)
    if "__shared__" in text:
        raise SyntaxError("a __shared__ declaration translate.py cannot rewrite: " +
                          text[text.find("__shared__"):][:80])
    return text


def main():
    src, dst = sys.argv[1], sys.argv[2]
    with open(src) as f:
        text = f.read()
    text = rewrite_shared(text)
    text, launches = rewrite_launches(text)
    with open(dst, "w") as f:
        f.write(f'#line 1 "{src}"\n{text}')
    print(f"translate.py: {src}: {launches} launches", file=sys.stderr)


if __name__ == "__main__":
    main()
