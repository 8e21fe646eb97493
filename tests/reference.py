"""The executable spec: every convnet op in plain NumPy float64, written for clarity, not speed.

Layouts follow the library: activations NHWC (N, H, W, C), conv filters KRSC (K, R, S, C/groups),
fully-connected weights (out, in). Each function returns new arrays; nothing here touches convnet.
"""
import numpy as np

# --------------------------------------------------------------------------------------------------
# Philox4x32-10 counter-based RNG (same stream as csrc/philox.h)

_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_MASK32 = np.uint64(0xFFFFFFFF)


def philox4x32_10(ctr, key):
    """ctr: uint32 (n, 4), key: (k0, k1) ints -> uint32 (n, 4)."""
    c = [np.asarray(ctr[:, j], dtype=np.uint64) for j in range(4)]
    k0, k1 = int(key[0]), int(key[1])
    for rnd in range(10):
        if rnd > 0:
            k0, k1 = (k0 + _W0) & 0xFFFFFFFF, (k1 + _W1) & 0xFFFFFFFF
        p0, p1 = _M0 * c[0], _M1 * c[2]
        hi0, lo0 = p0 >> np.uint64(32), p0 & _MASK32
        hi1, lo1 = p1 >> np.uint64(32), p1 & _MASK32
        c = [hi1 ^ c[1] ^ np.uint64(k0), lo1, hi0 ^ c[3] ^ np.uint64(k1), lo0]
    return np.stack(c, axis=1).astype(np.uint32)


def philox_uniform(seed, counter, n, offset=0):
    """Elements offset .. offset + n - 1 of the draw keyed by (seed, counter), uniforms in [0, 1):
    element e is word e % 4 of block e // 4. The draw has 2**64 elements: offset + n <= 2**64."""
    assert 0 <= offset and offset + n <= 2**64, "past the end of the draw"
    first = offset // 4
    blocks = np.uint64(first) + np.arange((offset + n + 3) // 4 - first, dtype=np.uint64)
    ctr = np.stack([blocks & _MASK32, blocks >> np.uint64(32),
                    np.full_like(blocks, counter & 0xFFFFFFFF), np.full_like(blocks, counter >> 32)], axis=1)
    words = philox4x32_10(ctr, (seed & 0xFFFFFFFF, seed >> 32)).reshape(-1)[offset - 4 * first:][:n]
    return (words >> 8).astype(np.float64) / 16777216.0


# --------------------------------------------------------------------------------------------------
# Memory: copy_, fill_, add_

def copy(src):
    """dst <- src: the same values, whatever the two devices."""
    return np.array(src, dtype=np.float64, copy=True)


def fill(shape, value):
    return np.full(shape, float(value))


def add(dst, src, alpha=1.0):
    """dst + alpha * src."""
    return dst + alpha * src


# --------------------------------------------------------------------------------------------------
# Fully connected, ReLU, dropout

def gemm(a, b, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, c=None):
    a = a.T if trans_a else a
    b = b.T if trans_b else b
    out = alpha * (a @ b)
    return out + beta * c if beta != 0.0 else out


def fc_forward(x, w, b=None):
    """x (N, in), w (out, in), b (out,) -> y (N, out) = x w^T + b."""
    y = x @ w.T
    return y + b if b is not None else y


def fc_backward(dy, x, w):
    """-> dx (N, in), dw (out, in), db (out,)."""
    return dy @ w, dy.T @ x, dy.sum(axis=0)


def relu_forward(x):
    """max(x, 0) with PyTorch's NaN rule: relu(NaN) = NaN (np.maximum propagates NaN)."""
    return np.maximum(x, 0.0)


def relu_backward(y, dy):
    """PyTorch's threshold_backward: dy where y is not <= 0, so a NaN output passes its gradient."""
    return np.where(y <= 0, 0.0, dy)


def leaky_relu_forward(x, slope=0.01):
    """x where x > 0, else slope x (NaN stays NaN)."""
    return np.where(x > 0, x, slope * x)


def leaky_relu_backward(x, dy, slope=0.01):
    """dy where the forward input x > 0, else slope dy."""
    return np.where(x > 0, dy, slope * dy)


def dropout_mask(shape, p, seed, counter, offset=0):
    """Keep-mask scaled for inverted dropout: 1/(1-p) where kept, 0 where dropped; element i takes
    element offset + i of the draw. p is the op's float32 argument: a draw of exactly float32(0.9)
    (one in 2^24) is kept at p = 0.9, as the kernels compare it."""
    n = int(np.prod(shape))
    keep = philox_uniform(seed, counter, n, offset) >= np.float32(p)
    return (keep / (1.0 - p)).reshape(shape)


def dropout_forward(x, p, seed, counter, offset=0):
    return x * dropout_mask(x.shape, p, seed, counter, offset)


def dropout_backward(dy, p, seed, counter, offset=0):
    return dy * dropout_mask(dy.shape, p, seed, counter, offset)


# --------------------------------------------------------------------------------------------------
# Softmax + cross-entropy, SGD

def softmax_cross_entropy(logits, labels):
    """logits (N, C), labels (N,) -> (mean loss, top-1 hits, top-5 hits, dlogits (N, C)).

    A prediction is a top-k hit when fewer than k classes have a strictly larger logit than the label
    and every logit of its row is finite (a NaN or Inf row is never a hit; its loss is NaN or Inf).
    """
    n = logits.shape[0]
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_probs[np.arange(n), labels].mean()
    label_logit = logits[np.arange(n), labels][:, None]
    rank = (logits > label_logit).sum(axis=1)
    finite = np.isfinite(logits).all(axis=1)
    dlogits = np.exp(log_probs)
    dlogits[np.arange(n), labels] -= 1.0
    return loss, int(((rank < 1) & finite).sum()), int(((rank < 5) & finite).sum()), dlogits / n


def sgd_update(w, g, v, lr, momentum, weight_decay):
    """The paper's rule: v <- m v - wd lr w - lr g; w <- w + v. Returns (w, v)."""
    v = momentum * v - weight_decay * lr * w - lr * g
    return w + v, v


# --------------------------------------------------------------------------------------------------
# Convolution (NHWC, KRSC, zero padding, channel groups)

def conv_output_size(size, kernel, stride, pad):
    """The floor rule: (size + 2 pad - kernel) // stride + 1."""
    return (size + 2 * pad - kernel) // stride + 1


def _windows(xpad, r, s, P, Q, sh, sw):
    """The (N, P, Q, C) slab of xpad that filter tap (r, s) sees."""
    return xpad[:, r:r + sh * (P - 1) + 1:sh, s:s + sw * (Q - 1) + 1:sw, :]


def conv_forward(x, w, b=None, stride=(1, 1), pad=(0, 0), groups=1):
    """x (N, H, W, C), w (K, R, S, C/groups), b (K,) -> y (N, P, Q, K)."""
    (N, H, W, C), (K, R, S, Cg) = x.shape, w.shape
    sh, sw = stride
    ph, pw = pad
    P, Q = conv_output_size(H, R, sh, ph), conv_output_size(W, S, sw, pw)
    Kg = K // groups
    xpad = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    y = np.zeros((N, P, Q, K))
    for g in range(groups):
        cs, ks = slice(g * Cg, (g + 1) * Cg), slice(g * Kg, (g + 1) * Kg)
        for r in range(R):
            for s in range(S):
                y[..., ks] += _windows(xpad, r, s, P, Q, sh, sw)[..., cs] @ w[ks, r, s, :].T
    return y + b if b is not None else y


def conv_backward(dy, x, w, stride=(1, 1), pad=(0, 0), groups=1):
    """-> dx (N, H, W, C), dw (K, R, S, C/groups), db (K,)."""
    (N, H, W, C), (K, R, S, Cg) = x.shape, w.shape
    sh, sw = stride
    ph, pw = pad
    P, Q = dy.shape[1:3]
    Kg = K // groups
    xpad = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    dxpad = np.zeros_like(xpad)
    dw = np.zeros_like(w)
    for g in range(groups):
        cs, ks = slice(g * Cg, (g + 1) * Cg), slice(g * Kg, (g + 1) * Kg)
        dyg = dy[..., ks].reshape(N * P * Q, Kg)  # explicit rows: Kg or Cg may be 0
        for r in range(R):
            for s in range(S):
                xs = _windows(xpad, r, s, P, Q, sh, sw)[..., cs].reshape(N * P * Q, Cg)
                dw[ks, r, s, :] = dyg.T @ xs
                _windows(dxpad, r, s, P, Q, sh, sw)[..., cs] += (dyg @ w[ks, r, s, :]).reshape(N, P, Q, Cg)
    dx = dxpad[:, ph:ph + H, pw:pw + W, :]
    return dx, dw, dy.sum(axis=(0, 1, 2))


# --------------------------------------------------------------------------------------------------
# Local response normalisation across channels

def _lrn_window_sum(v, size):
    """out[..., c] = sum of v[..., c2] for c2 in [c - size//2, c - size//2 + size), inside [0, C)."""
    C, lo = v.shape[-1], size // 2
    out = np.zeros_like(v)
    for o in range(max(0, lo - C + 1), min(size, lo + C)):  # taps with |shift| >= C add nothing
        shift = o - lo  # c2 = c + shift
        if abs(shift) >= C:
            continue  # the tap lies outside [0, C) for every channel
        if shift >= 0:
            out[..., :C - shift] += v[..., shift:]
        else:
            out[..., -shift:] += v[..., :C + shift]
    return out


def lrn_forward(x, size=5, alpha=1e-4, beta=0.75, k=2.0):
    """The paper's form: b = a / (k + alpha * sum_window a^2)^beta (alpha NOT divided by size)."""
    scale = k + alpha * _lrn_window_sum(x * x, size)
    return x * scale ** -beta


def lrn_backward(x, dy, size=5, alpha=1e-4, beta=0.75, k=2.0):
    scale = k + alpha * _lrn_window_sum(x * x, size)
    t = dy * x * scale ** (-beta - 1.0)
    # element i is in the window of j when j = i - shift for each window offset: the transpose sum.
    C, lo = x.shape[-1], size // 2
    back = np.zeros_like(x)
    for o in range(max(0, lo - C + 1), min(size, lo + C)):
        shift = o - lo
        if abs(shift) >= C:
            continue
        if shift >= 0:
            back[..., shift:] += t[..., :C - shift]
        else:
            back[..., :C + shift] += t[..., -shift:]
    return dy * scale ** -beta - 2.0 * alpha * beta * x * back


# --------------------------------------------------------------------------------------------------
# Pooling (padding never takes part in a window)

def _pool_taps(x, R, S, stride, pad):
    """Yield (r, s, values (N, P, Q, C), flat input index (P, Q), valid (P, Q)) for every window tap."""
    N, H, W, C = x.shape
    sh, sw = stride
    ph, pw = pad
    P, Q = conv_output_size(H, R, sh, ph), conv_output_size(W, S, sw, pw)
    for r in range(R):
        for s in range(S):
            hh = np.arange(P) * sh - ph + r
            ww = np.arange(Q) * sw - pw + s
            valid = (hh[:, None] >= 0) & (hh[:, None] < H) & (ww[None, :] >= 0) & (ww[None, :] < W)
            if H and W:
                vals = x[:, np.clip(hh, 0, H - 1)][:, :, np.clip(ww, 0, W - 1)]
            else:  # no input pixel at all: every tap is padding
                vals = np.zeros((N, P, Q, C))
            yield vals, hh[:, None] * W + ww[None, :], valid


def max_pool_forward(x, R=3, S=3, stride=(2, 2), pad=(0, 0)):
    """-> y (N, P, Q, C), argmax (N, P, Q, C) int: flat index h*W + w of the first maximum in
    row-major window order; -1 (and y = 0) for a window with no valid input. NaN propagates as in
    PyTorch: a window holding a NaN gives NaN, and argmax is its first NaN (np.argmax's rule)."""
    taps = list(_pool_taps(x, R, S, stride, pad))
    vals = np.stack([v for v, _, _ in taps])
    valid = np.stack([ok for _, _, ok in taps])[:, None, :, :, None]
    idx = np.stack([np.where(ok, i, -1) for _, i, ok in taps])
    y = np.where(valid, vals, -np.inf).max(axis=0)  # np.max propagates NaN
    # The first in-bounds tap holding the maximum: padding never wins, not even over an input of -inf.
    hit = valid & ((vals == y) | (np.isnan(vals) & np.isnan(y)))
    best = np.argmax(hit, axis=0)
    argmax = np.take_along_axis(np.broadcast_to(idx[:, None, :, :, None], vals.shape), best[None], axis=0)[0]
    empty = ~valid.any(axis=0)
    return np.where(empty, 0.0, y), np.where(empty, -1, argmax)


def max_pool_backward(dy, argmax, x_shape):
    N, H, W, C = x_shape
    dx = np.zeros((N, H * W, C))
    n, p, q, c = np.nonzero(argmax >= 0)
    np.add.at(dx, (n, argmax[n, p, q, c], c), dy[n, p, q, c])
    return dx.reshape(x_shape)


def avg_pool_forward(x, R=3, S=3, stride=(2, 2), pad=(0, 0)):
    """Mean over each window's in-bounds inputs (padding is not counted)."""
    total, count = 0.0, 0.0
    for v, _, valid in _pool_taps(x, R, S, stride, pad):
        total = total + np.where(valid[None, :, :, None], v, 0.0)
        count = count + valid
    return total / np.maximum(count, 1)[None, :, :, None]


def avg_pool_backward(dy, x_shape, R=3, S=3, stride=(2, 2), pad=(0, 0)):
    N, H, W, C = x_shape
    count = 0.0
    taps = list(_pool_taps(np.zeros((1, H, W, 1)), R, S, stride, pad))
    for _, _, valid in taps:
        count = count + valid
    share = dy / np.maximum(count, 1)[None, :, :, None]
    dx = np.zeros((N, H * W, C))
    for _, idx, valid in taps:
        p, q = np.nonzero(valid)
        np.add.at(dx, (slice(None), idx[p, q]), share[:, p, q, :])
    return dx.reshape(x_shape)


# --------------------------------------------------------------------------------------------------
# reduced precision (python/convnet/precision.py)

def round_bf16(x, flush_denormals=True):
    """float32(x) rounded to bfloat16 (round to nearest even; denormals to signed zero, as
    vcvtne2ps2bf16 does, unless flush_denormals=False: CUDA's cvt.rn.bf16 keeps them), returned
    as float64."""
    u = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    exp_zero = (u & 0x7F800000) == 0
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    if flush_denormals:
        r = np.where(exp_zero, (u >> 31) << 31, r)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    r = np.where(nan, u | 0x400000, r)
    return (r & 0xFFFFFFFF).astype(np.uint32).view(np.float32).astype(np.float64)


def round_tf32(x):
    """float32(x) rounded to TF32 as CUDA's cvt.rna.tf32.f32 does (10-bit mantissa, round to nearest,
    ties away from zero; Inf stays, NaN stays NaN, overflow gives Inf), returned as float64."""
    u = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    special = (u & 0x7F800000) == 0x7F800000
    r = ((u + 0x1000) & 0xFFFFE000) & 0xFFFFFFFF
    r = np.where(special, u, r)
    return r.astype(np.uint32).view(np.float32).astype(np.float64)
