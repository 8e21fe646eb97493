"""Bad input becomes a Python exception naming the op and the shapes, and the process goes on."""
import numpy as np
import pytest

import convnet

ops = convnet.ops


def still_usable(device):
    t = convnet.full((4,), 3.0, device)
    ops.relu_forward(t, t)
    np.testing.assert_array_equal(t.numpy(), np.full(4, 3.0, np.float32))


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "cuda:-1", "CPU", "cuda:99999", ""])
def test_unknown_device_strings(name):
    with pytest.raises(ValueError, match="device"):
        convnet.zeros((2,), name)
    still_usable("cpu")


def test_missing_cuda_device_says_what_exists():
    n = convnet.build_info()["cuda_devices"]
    with pytest.raises(ValueError, match=f"cuda:{n}' is not available"):
        convnet.zeros((2,), f"cuda:{n}")


def test_non_float32_data(device):
    for dtype in (np.float64, np.float16, np.int64, np.uint8, bool):
        with pytest.raises(ValueError, match=r"Tensor.from_numpy: expected a float32 or int32 array, got"):
            convnet.from_numpy(np.zeros((2, 3), dtype), device)
    ints = convnet.zeros((2, 3), device, "int32")
    with pytest.raises(ValueError, match=r"fc_forward: x must be float32, got int32 \(2, 3\)"):
        ops.fc_forward(ints, convnet.zeros((4, 3), device), None, convnet.zeros((2, 4), device))
    with pytest.raises(ValueError, match="softmax_cross_entropy: labels must be int32"):
        ops.softmax_cross_entropy(convnet.zeros((2, 3), device), convnet.zeros((2,), device), None,
                                  convnet.zeros((3,), device))
    with pytest.raises(ValueError, match="unknown dtype"):
        convnet.zeros((2,), device, "float64")
    still_usable(device)


def test_wrong_rank_and_size(device):
    z = lambda *s: convnet.zeros(s, device)  # noqa: E731
    with pytest.raises(ValueError, match=r"fc_forward: w must be 2-D \(out, in\), got shape \(4, 3, 1\)"):
        ops.fc_forward(z(2, 3), z(4, 3, 1), None, z(2, 4))
    with pytest.raises(ValueError, match=r"fc_forward: w \(4, 5\) expects 5 input features but x \(2, 3\) has 3"):
        ops.fc_forward(z(2, 3), z(4, 5), None, z(2, 4))
    with pytest.raises(ValueError, match=r"fc_forward: y has shape \(2, 5\) but x \(2, 3\) and w \(4, 3\) needs \(2, 4\)"):
        ops.fc_forward(z(2, 3), z(4, 3), None, z(2, 5))
    with pytest.raises(ValueError, match=r"fc_forward: b has shape \(3,\)"):
        ops.fc_forward(z(2, 3), z(4, 3), z(3), z(2, 4))
    with pytest.raises(ValueError, match=r"relu_forward: y has shape \(3,\) but x \(4,\) needs \(4,\)"):
        ops.relu_forward(z(4), z(3))
    with pytest.raises(ValueError, match=r"conv_forward: x must be 4-D \(N, H, W, C\)"):
        ops.conv_forward(z(5, 5, 3), z(4, 3, 3, 3), None, z(1, 3, 3, 4))
    with pytest.raises(ValueError, match=r"softmax_cross_entropy: stats has shape \(2,\)"):
        ops.softmax_cross_entropy(z(2, 3), convnet.zeros((2,), device, "int32"), None, z(2))
    with pytest.raises(ValueError, match="gemm: c must not share memory with a"):
        a = z(3, 3)
        ops.gemm(a, z(3, 3), a)
    still_usable(device)


def test_out_of_range_label_on_cpu():
    with pytest.raises(ValueError, match=r"label 5 at row 1 is outside \[0, 3\)"):
        ops.softmax_cross_entropy(convnet.zeros((2, 3)), convnet.from_numpy(np.array([0, 5], np.int32)), None,
                                  convnet.zeros((3,)))
    still_usable("cpu")


def test_tensors_on_different_devices(cuda_device):
    x = convnet.zeros((2, 3), "cpu")
    w = convnet.zeros((4, 3), cuda_device)
    with pytest.raises(ValueError, match=f"fc_forward: all tensors must be on one device, but x is on cpu and w is on {cuda_device}"):
        ops.fc_forward(x, w, None, convnet.zeros((2, 4), cuda_device))
    still_usable(cuda_device)


def test_copy_checks():
    with pytest.raises(ValueError, match=r"copy_: dst has shape \(3,\) but src \(4,\) needs \(4,\)"):
        convnet.zeros((3,)).copy_(convnet.zeros((4,)))
    with pytest.raises(ValueError, match="copy_: dtypes differ"):
        convnet.zeros((3,)).copy_(convnet.zeros((3,), "cpu", "int32"))
