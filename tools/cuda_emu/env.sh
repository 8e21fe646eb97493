# cuda_emu: source this to run Python against the emulated build in build-emu/ (tools/cuda_emu/README.md).
_emu_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
_emu_out=${EMU_BUILD_DIR:-$_emu_root/build-emu}
export PYTHONPATH=$_emu_out${PYTHONPATH:+:$PYTHONPATH}
if [ "$(cat "$_emu_out/asan" 2>/dev/null)" = 1 ]; then
  # libasan must be the first library loaded into the (uninstrumented) python process, and
  # libstdc++ must be loaded when it starts, or its __cxa_throw interceptor fails at the first throw.
  export LD_PRELOAD=$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libstdc++.so)
  # no leak report for the interpreter's own allocations; huge cudaMalloc requests fail, not abort;
  # an error report names the .cu line.
  export ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:abort_on_error=1:symbolize=1:detect_stack_use_after_return=0
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
fi
unset _emu_root _emu_out
