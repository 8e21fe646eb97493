"""ReLU, dropout (Philox), softmax + cross-entropy, SGD, fill/add: against tests/reference.py."""
import numpy as np
import pytest

import convnet
import reference as ref
from conftest import poisoned, to_device
from gradcheck import assert_close, check_gradient

ops = convnet.ops
SIZES = [1, 3, 17, 1000, 4099, 70001]


# --------------------------------------------------------------------------------------------------
# Philox

def test_philox_reference_matches_known_answers():
    # Known-answer vectors of Random123 (Salmon et al. 2011) for philox4x32-10.
    cases = [
        ([0, 0, 0, 0], (0, 0), [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
        ([0xFFFFFFFF] * 4, (0xFFFFFFFF, 0xFFFFFFFF), [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
        ([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], (0xA4093822, 0x299F31D0),
         [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
    ]
    for ctr, key, expected in cases:
        out = ref.philox4x32_10(np.array([ctr], dtype=np.uint32), key)[0]
        assert [int(v) for v in out] == expected


# --------------------------------------------------------------------------------------------------
# fill, add

@pytest.mark.parametrize("n", SIZES)
def test_fill_and_add(device, rng, n):
    t = poisoned((n,), device)
    ops.fill_(t, 0.25)
    np.testing.assert_array_equal(t.numpy(), ref.fill((n,), 0.25))
    a, b = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    ta = to_device(a, device)
    ops.add_(ta, to_device(b, device), -1.5)
    assert_close(ta.numpy(), ref.add(a.astype(np.float64), b.astype(np.float64), -1.5), 1e-6)


# --------------------------------------------------------------------------------------------------
# Leaky ReLU (the worked example of docs/architecture.md "How to add an op")

@pytest.mark.parametrize("shape", [(1,), (7, 5), (2, 3, 4, 33), (70001,)])
@pytest.mark.parametrize("slope", [0.01, 0.2, -0.5])
def test_leaky_relu_forward_backward(device, rng, shape, slope):
    x = rng.standard_normal(shape).astype(np.float32)
    x.flat[::7] = 0.0  # the boundary: x = 0 takes the slope
    dy = rng.standard_normal(shape).astype(np.float32)
    y, dx = poisoned(shape, device), poisoned(shape, device)
    ops.leaky_relu_forward(to_device(x, device), y, slope)
    ops.leaky_relu_backward(to_device(x, device), to_device(dy, device), dx, slope)
    assert_close(y.numpy(), ref.leaky_relu_forward(x.astype(np.float64), slope), 1e-6, "y")
    assert_close(dx.numpy(), ref.leaky_relu_backward(x.astype(np.float64), dy.astype(np.float64), slope), 1e-6, "dx")


def test_leaky_relu_gradient_check_and_in_place(device, rng):
    x = rng.standard_normal((6, 9))
    x[np.abs(x) < 0.05] = 0.5  # away from the kink, where a finite difference straddles it
    dy = rng.standard_normal((6, 9)).astype(np.float32)
    dx = poisoned((6, 9), device)
    ops.leaky_relu_backward(to_device(x, device), to_device(dy, device), dx, 0.1)
    check_gradient(dx.numpy(), lambda v: ref.leaky_relu_forward(v, 0.1), x, dy.astype(np.float64), rng,
                   samples=54, what="leaky relu dx")
    t = to_device(x, device)
    ops.leaky_relu_forward(t, t)  # in place, default slope 0.01
    assert_close(t.numpy(), ref.leaky_relu_forward(x.astype(np.float32).astype(np.float64)), 1e-6, "in place")


def test_leaky_relu_errors(device):
    x, y = convnet.zeros((3, 4), device), convnet.zeros((3, 4), device)
    with pytest.raises(ValueError, match="leaky_relu_forward: slope must be finite"):
        ops.leaky_relu_forward(x, y, float("nan"))
    with pytest.raises(ValueError, match="leaky_relu_backward: dx has shape"):
        ops.leaky_relu_backward(x, y, convnet.zeros((4, 3), device))
    with pytest.raises(ValueError, match="leaky_relu_forward: x must be float32"):
        ops.leaky_relu_forward(convnet.zeros((3, 4), device, "int32"), y)


# --------------------------------------------------------------------------------------------------
# ReLU

@pytest.mark.parametrize("shape", [(1,), (7, 3), (2, 5, 5, 3), (4, 13, 13, 96)])
def test_relu_forward_backward(device, rng, shape):
    x, dy = rng.standard_normal(shape), rng.standard_normal(shape)
    y = poisoned(shape, device)
    ops.relu_forward(to_device(x, device), y)
    np.testing.assert_array_equal(y.numpy(), ref.relu_forward(x.astype(np.float32)))
    dx = poisoned(shape, device)
    ops.relu_backward(y, to_device(dy, device), dx)
    np.testing.assert_array_equal(dx.numpy(), ref.relu_backward(ref.relu_forward(x), dy).astype(np.float32))
    check_gradient(dx.numpy(), ref.relu_forward, x.astype(np.float32).astype(np.float64), dy.astype(np.float32), rng)


def test_relu_in_place(device, rng):
    x = rng.standard_normal(100)
    t = to_device(x, device)
    ops.relu_forward(t, t)
    np.testing.assert_array_equal(t.numpy(), np.maximum(x, 0).astype(np.float32))


# --------------------------------------------------------------------------------------------------
# Dropout

@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("p", [0.0, 0.5, 0.9])
def test_dropout_matches_reference_mask(device, rng, n, p):
    seed, counter = int(rng.integers(0, 2**63)), int(rng.integers(0, 2**40))
    x = rng.standard_normal(n)
    y = poisoned((n,), device)
    ops.dropout_forward(to_device(x, device), y, p, seed, counter)
    expected = ref.dropout_forward(x.astype(np.float32).astype(np.float64), p, seed, counter)
    assert_close(y.numpy(), expected, 1e-6, "dropout forward")
    np.testing.assert_array_equal(y.numpy() == 0, expected == 0)  # the very same mask
    dy = rng.standard_normal(n)
    dx = poisoned((n,), device)
    ops.dropout_backward(to_device(dy, device), dx, p, seed, counter)
    assert_close(dx.numpy(), ref.dropout_backward(dy.astype(np.float32).astype(np.float64), p, seed, counter),
                 1e-6, "dropout backward")


def test_dropout_statistics_and_keys(device):
    n, p = 200_000, 0.5
    x = convnet.full((n,), 1.0, device)
    y1, y2, y3 = (poisoned((n,), device) for _ in range(3))
    ops.dropout_forward(x, y1, p, 7, 0)
    ops.dropout_forward(x, y2, p, 7, 0)
    ops.dropout_forward(x, y3, p, 7, 1)
    a, b, c = y1.numpy(), y2.numpy(), y3.numpy()
    np.testing.assert_array_equal(a, b)  # same key, same mask
    assert (a != c).mean() > 0.4  # another counter, another mask
    kept = (a != 0).mean()
    assert abs(kept - 0.5) < 0.005
    assert abs(a.mean() - 1.0) < 0.01  # inverted dropout keeps the expectation
    assert set(np.unique(a)) <= {0.0, 2.0}


@pytest.mark.parametrize("n", [1, 5, 4099, 70001])
@pytest.mark.parametrize("offset", [1, 2, 3, 4, 4097])
def test_dropout_offset_draws_the_slice_of_the_larger_draw(device, rng, n, offset):
    # A slice starting at element `offset` of a larger tensor gets exactly that slice of its mask,
    # for offsets inside a Philox block (1, 2, 3) and on block boundaries (4).
    seed, counter, p = int(rng.integers(0, 2**63)), int(rng.integers(0, 2**40)), 0.5
    whole = rng.standard_normal(offset + n).astype(np.float32)
    y_whole = poisoned((offset + n,), device)
    ops.dropout_forward(to_device(whole, device), y_whole, p, seed, counter)
    y = poisoned((n,), device)
    ops.dropout_forward(to_device(whole[offset:], device), y, p, seed, counter, offset)
    np.testing.assert_array_equal(y.numpy(), y_whole.numpy()[offset:])
    expected = ref.dropout_forward(whole[offset:].astype(np.float64), p, seed, counter, offset)
    assert_close(y.numpy(), expected, 1e-6, "dropout forward with offset")
    dy = rng.standard_normal(n).astype(np.float32)
    dx = poisoned((n,), device)
    ops.dropout_backward(to_device(dy, device), dx, p, seed, counter, offset)
    np.testing.assert_array_equal(dx.numpy() == 0, y.numpy() == 0)
    assert_close(dx.numpy(), ref.dropout_backward(dy.astype(np.float64), p, seed, counter, offset), 1e-6,
                 "dropout backward with offset")


def test_dropout_gradient_check(device, rng):
    # The mask is a function of (seed, counter, offset), so the reference forward with the same key is
    # a deterministic function of x whose derivative our backward must give.
    seed, counter, offset, p = int(rng.integers(0, 2**63)), int(rng.integers(0, 2**40)), 3, 0.4
    x = rng.standard_normal((5, 7))
    dy = rng.standard_normal((5, 7)).astype(np.float32)
    dx = poisoned((5, 7), device)
    ops.dropout_backward(to_device(dy, device), dx, p, seed, counter, offset)
    check_gradient(dx.numpy(), lambda v: ref.dropout_forward(v, p, seed, counter, offset), x,
                   dy.astype(np.float64), rng, samples=35, what="dropout dx")


def test_dropout_layer_keys_masks_by_global_sample_index(device, rng):
    # Two halves of a batch, passed with sample_offset = 0 and N/2, draw the masks of the whole
    # batch: the property data-parallel ranks and micro-batches rely on. Without the offset both
    # halves would draw the same mask.
    net = convnet.Net([{"name": "data", "type": "data", "shape": [3, 5, 2]},
                       {"name": "drop", "type": "dropout", "inputs": ["data"], "p": 0.5}], device=device)
    x = rng.standard_normal((6, 3, 5, 2)).astype(np.float32)
    whole = net.forward(x, train=True, step=3, seed=11, backward=False).numpy()
    halves = [net.forward(x[k:k + 3], train=True, step=3, seed=11, backward=False, sample_offset=k).numpy()
              for k in (0, 3)]
    np.testing.assert_array_equal(np.concatenate(halves), whole)
    assert not np.array_equal(whole[:3] == 0, whole[3:] == 0)
    with pytest.raises(ValueError, match="sample_offset"):
        net.forward(x, train=True, sample_offset=-1, backward=False)


def test_dropout_identical_on_cpu_and_cuda(cuda_device, rng):
    x = rng.standard_normal((3, 1001)).astype(np.float32)
    out = {}
    for d in ("cpu", cuda_device):
        y = poisoned(x.shape, d)
        ops.dropout_forward(to_device(x, d), y, 0.5, 123456789, 42)
        out[d] = y.numpy()
    np.testing.assert_array_equal(out["cpu"], out[cuda_device])


def test_dropout_rejects_bad_probability(device):
    x = convnet.zeros((4,), device)
    for p in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"dropout_forward: p must be in \[0, 1\)"):
            ops.dropout_forward(x, convnet.zeros((4,), device), p, 0, 0)


# --------------------------------------------------------------------------------------------------
# Softmax + cross-entropy

def _softmax_run(device, logits, labels, with_grad=True):
    n, c = logits.shape
    stats = poisoned((3,), device)
    dlogits = poisoned((n, c), device) if with_grad else None
    ops.softmax_cross_entropy(to_device(logits, device), to_device(labels, device, np.int32), dlogits, stats)
    return stats.numpy(), (dlogits.numpy() if with_grad else None)


@pytest.mark.parametrize("n,c", [(1, 1), (1, 2), (3, 4), (7, 10), (128, 1000), (5, 1003)])
def test_softmax_cross_entropy(device, rng, n, c):
    logits = (rng.standard_normal((n, c)) * 3).astype(np.float32)
    labels = rng.integers(0, c, n)
    stats, dlogits = _softmax_run(device, logits, labels)
    loss, top1, top5, dref = ref.softmax_cross_entropy(logits.astype(np.float64), labels)
    assert abs(stats[0] - loss) <= 1e-5 * max(1.0, abs(loss))
    assert stats[1] == top1 and stats[2] == top5
    assert_close(dlogits, dref, 1e-5, "dlogits")
    loss_only, none = _softmax_run(device, logits, labels, with_grad=False)
    assert none is None and abs(loss_only[0] - loss) <= 1e-5 * max(1.0, abs(loss))


def test_softmax_gradient_check(device, rng):
    logits = rng.standard_normal((4, 6)).astype(np.float32)
    labels = rng.integers(0, 6, 4)
    _, dlogits = _softmax_run(device, logits, labels)
    check_gradient(dlogits, lambda z: np.array(ref.softmax_cross_entropy(z, labels)[0]),
                   logits.astype(np.float64), np.array(1.0), rng, samples=24)


def test_softmax_is_stable_for_huge_logits(device):
    logits = np.array([[1e4, -1e4, 0.0], [3e38, 3e38, -3e38], [-1e30, -1e30, -1e30]], np.float32)
    labels = np.array([0, 1, 2])
    stats, dlogits = _softmax_run(device, logits, labels)
    assert np.isfinite(stats).all() and np.isfinite(dlogits).all()
    loss, top1, top5, dref = ref.softmax_cross_entropy(logits.astype(np.float64), labels)
    assert abs(stats[0] - loss) < 1e-5 * max(1.0, loss)
    assert stats[1] == top1 and stats[2] == top5
    assert_close(dlogits, dref, 1e-5)


def test_softmax_topk_ties_count_as_hits(device):
    logits = np.zeros((2, 8), np.float32)  # all tied: nothing strictly above the label
    logits[1, :6] = 1.0  # label 7 has six classes above it
    stats, _ = _softmax_run(device, logits, np.array([3, 7]))
    assert stats[1] == 1 and stats[2] == 1


# --------------------------------------------------------------------------------------------------
# SGD

def test_sgd_update_list_of_tensors(device, rng):
    shapes = [(96, 11, 11, 3), (96,), (1,), (4096, 7), (3, 5)]
    lrs = [0.01, 0.02, 0.5, 0.001, 0.1]
    wds = [5e-4, 0.0, 1e-2, 5e-4, 0.0]
    momentum = 0.9
    ws = [rng.standard_normal(s) for s in shapes]
    gs = [rng.standard_normal(s) for s in shapes]
    vs = [rng.standard_normal(s) * 0.1 for s in shapes]
    tw, tg, tv = ([to_device(a, device) for a in arrs] for arrs in (ws, gs, vs))
    ops.sgd_update(tw, tg, tv, lrs, wds, momentum)
    for i in range(len(shapes)):
        w32, g32, v32 = (a.astype(np.float32).astype(np.float64) for a in (ws[i], gs[i], vs[i]))
        w_ref, v_ref = ref.sgd_update(w32, g32, v32, lrs[i], momentum, wds[i])
        assert_close(tw[i].numpy(), w_ref, 1e-6, f"w[{i}]")
        assert_close(tv[i].numpy(), v_ref, 1e-5, f"v[{i}]")


def test_sgd_update_many_tensors(device, rng):
    # More tensors than one CUDA launch takes (32): the launcher must batch them.
    n = 70
    ws = [rng.standard_normal(int(rng.integers(1, 300))) for _ in range(n)]
    tw = [to_device(w, device) for w in ws]
    tg = [to_device(np.ones_like(w), device) for w in ws]
    tv = [convnet.zeros(w.shape, device) for w in ws]
    ops.sgd_update(tw, tg, tv, [0.1] * n, [0.0] * n, 0.0)
    for w, t in zip(ws, tw):
        assert_close(t.numpy(), w.astype(np.float32) - 0.1, 1e-6)


def test_sgd_update_argument_checks(device):
    w = convnet.zeros((3,), device)
    with pytest.raises(ValueError, match="sgd_update: params, grads, velocities"):
        ops.sgd_update([w], [w], [], [0.1], [0.0], 0.9)
    with pytest.raises(ValueError, match=r"sgd_update: grads\[0\] has shape \(4,\)"):
        ops.sgd_update([w], [convnet.zeros((4,), device)], [convnet.zeros((3,), device)], [0.1], [0.0], 0.9)
