#!/usr/bin/env python3
"""cuda_emu: turn a CUDA source (cuda/*.cu) into C++ that g++ compiles against tools/cuda_emu.

Three rewrites, all keeping line numbers (a `#line` directive points errors and sanitizer reports
back at the .cu file):
  * `kernel<<<grid, block[, smem[, stream]]>>>(args)` (template kernels and launches over several
    lines included) -> `::emu::launch("kernel", ::emu::Cfg(grid, block, ...), kernel, args)`;
  * `__shared__ T name[..];` -> a function-static array plus `::emu::shared_touch(name, sizeof(name))`,
    which poisons it when a block first reaches it (shared memory starts as garbage on a GPU);
    `extern __shared__ T name[];` -> `T* name = (T*)::emu::dynamic_shared();`;
  * in the runtime file that defines the caching allocator (cuda/runtime/device_runtime.cu, found by
    its `device_alloc` definition, not by name): device_alloc / device_free are wrapped so that each tensor's exact byte range
    is addressable and the rest of the caching allocator's rounded block, and any block sitting in
    the cache, is poisoned for AddressSanitizer (the source of the allocator is unchanged).

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


DEVICE_ALLOC = "void* device_alloc(int device, size_t bytes) {"
DEVICE_FREE = "void device_free(int device, void* ptr, size_t bytes) {"
DEVICE_WRAPPERS = """
namespace convnet {
namespace cuda {
// cuda_emu: exact tensor bounds and use-after-free checks around the caching allocator.
void* device_alloc(int device, size_t bytes) {
  void* p = emu_device_alloc_(device, bytes);
  ::emu::on_device_alloc(p, bytes, round_size(bytes));
  return p;
}
void device_free(int device, void* ptr, size_t bytes) {
  ::emu::on_device_free(ptr, bytes, round_size(bytes));
  emu_device_free_(device, ptr, bytes);
}
}  // namespace cuda
}  // namespace convnet
"""


def rewrite_device(text):
    for old in (DEVICE_ALLOC, DEVICE_FREE):
        if text.count(old) != 1:
            raise SyntaxError(f"the allocator's file: expected one `{old}`")
    text = text.replace(DEVICE_ALLOC, "static void* emu_device_alloc_(int device, size_t bytes) {")
    text = text.replace(DEVICE_FREE, "static void emu_device_free_(int device, void* ptr, size_t bytes) {")
    # the wrappers go first in the file's own namespace so every caller gets them
    first_use = text.find("namespace convnet {")
    decl = ("namespace convnet {\nnamespace cuda {\n"
            "static void* emu_device_alloc_(int device, size_t bytes);\n"
            "static void emu_device_free_(int device, void* ptr, size_t bytes);\n}\n}\n")
    # keep line numbers: the declarations go on the line of the first `namespace convnet {`
    text = text[:first_use] + decl.replace("\n", " ") + text[first_use:]
    return text + DEVICE_WRAPPERS


def main():
    src, dst = sys.argv[1], sys.argv[2]
    with open(src) as f:
        text = f.read()
    text = rewrite_shared(text)
    text, launches = rewrite_launches(text)
    if DEVICE_ALLOC in text:
        text = rewrite_device(text)
    with open(dst, "w") as f:
        f.write(f'#line 1 "{src}"\n{text}')
    print(f"translate.py: {src}: {launches} launches", file=sys.stderr)


if __name__ == "__main__":
    main()
