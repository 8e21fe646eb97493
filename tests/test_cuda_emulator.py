"""The CUDA kernels, run: the suite's cuda:0 / cuda:1 cases against the real cuda/*.cu source compiled
for the CPU emulator in tools/cuda_emu (AddressSanitizer on, barriers and shuffles checked).

Most machines of this project have nvcc but no GPU, so without this nothing would ever execute the
CUDA code before a GPU session. It costs ~10-20 minutes on 2 cores (timeout 50 min), so it carries the `emulator` marker: the default
`pytest` leaves it out and `.ci/run` runs it as a second invocation, `pytest -m emulator`.
CONVNET_SKIP_EMULATOR=1 skips it (tools/device_check.sh does, since a real GPU runs the same cases there).
"""
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _why_not():
    if os.environ.get("CONVNET_SKIP_EMULATOR") == "1":
        return "CONVNET_SKIP_EMULATOR=1"
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return "the emulator's fibers are x86-64 Linux only"
    if not shutil.which("g++"):
        return "no g++"
    for tool in ("cmake", "ninja"):  # tools/cuda_emu/build.sh is the CMake build's emulator mode
        if not shutil.which(tool):
            return f"no {tool} (pip install '.[test]')"
    try:
        import pybind11  # noqa: F401
    except ImportError:
        return "pybind11 is not installed (pip install '.[test]')"
    if not (ROOT / "tools" / "cuda_emu" / "run_tests.sh").exists():
        return "tools/cuda_emu is not in this checkout"
    return None


@pytest.mark.emulator
@pytest.mark.skipif(_why_not() is not None, reason=str(_why_not()))
def test_cuda_kernels_under_the_emulator(tmp_path):
    env = dict(os.environ, EMU_QUICK="1", EMU_BUILD_DIR=str(tmp_path / "build-emu"))
    env.pop("CONVNET_TEST_DEVICES", None)
    run = subprocess.run(["bash", str(ROOT / "tools" / "cuda_emu" / "run_tests.sh"), "-x"], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=3000)
    assert run.returncode == 0, "emulated CUDA run failed:\n" + run.stdout[-6000:]
