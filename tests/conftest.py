"""Shared fixtures: the devices to test on, fresh random generators, NaN-poisoned outputs.

Every op test takes the `device` fixture and so runs once per device: "cpu" always, "cuda:0" (and
"cuda:1" where present) skip with a reason on a machine without a GPU or a build without CUDA.
CONVNET_TEST_DEVICES=cuda:0 (a comma-separated list) restricts the run, as tools/device_check.sh does.
"""
import os
import secrets

import numpy as np
import pytest

import convnet

CANDIDATE_DEVICES = ["cpu", "cuda:0", "cuda:1"]


def _skip_reason(device):
    if device in convnet.devices():
        return None
    if device.startswith("cuda") and not convnet.build_info()["cuda"]:
        return "convnet was built without CUDA"
    if device.startswith("cuda"):
        n = convnet.build_info()["cuda_devices"]
        return f"no {device} here (this machine has {n} CUDA device(s))"
    return f"{device} not available"


def _selected():
    wanted = os.environ.get("CONVNET_TEST_DEVICES")
    return [d.strip() for d in wanted.split(",")] if wanted else CANDIDATE_DEVICES


def _device_params(devices):
    params = []
    for d in devices:
        reason = _skip_reason(d)
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        params.append(pytest.param(d, marks=marks, id=d))
    return params


@pytest.fixture(params=_device_params(_selected()))
def device(request):
    """Each device this suite covers ("cpu", "cuda:0", ...); unavailable ones skip with a reason."""
    return request.param


@pytest.fixture(params=_device_params([d for d in _selected() if d.startswith("cuda")][:1] or ["cuda:0"]))
def cuda_device(request):
    """The first CUDA device, for tests that compare it with the CPU."""
    return request.param


@pytest.fixture
def rng(request):
    """A generator with a fresh seed each run; the seed is printed when the test fails."""
    seed = secrets.randbits(32)
    request.node.rng_seed = seed
    return np.random.default_rng(seed)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    seed = getattr(item, "rng_seed", None)
    if seed is not None and report.failed:
        report.sections.append(("random inputs", f"rng seed {seed} (np.random.default_rng({seed}))"))


def poisoned(shape, device, dtype="float32"):
    """An output tensor full of NaN (or -7 for int32): an element the op forgets to write stays wrong."""
    if dtype == "int32":
        return convnet.from_numpy(np.full(shape, -7, dtype=np.int32), device)
    return convnet.full(shape, float("nan"), device)


def to_device(array, device, dtype=np.float32):
    return convnet.from_numpy(np.ascontiguousarray(array, dtype=dtype), device)
