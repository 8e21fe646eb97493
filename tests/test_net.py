"""The graph (layers.py, net.py): a whole training step equals the composition of the reference ops.

The test net has every layer kind of AlexNet plus the two DAG rules: a layer with two inputs sums them
(convB reads data and conv1; fc2 reads drop1 and r), and a tensor read by two layers sums their
gradients (pool1 feeds fc1, which accumulates in place, and r, a ReLU that cannot: scratch + add_).
"""
import numpy as np
import pytest

import convnet
import reference as R
from convnet.layers import dropout_counter
from convnet.net import Net
from gradcheck import assert_close, check_gradient

LRN = dict(size=3, alpha=0.1, beta=0.75, k=1.0)
PAD = (1, 1)
SEED, STEP = 1234, 7


def small_dag(H=6, C=3, classes=5):
    return [
        {"name": "data", "type": "data", "shape": [H, H, C]},
        {"name": "conv1", "type": "conv", "inputs": ["data"], "filters": 4, "size": 3, "pad": 1, "relu": True,
         "init_std": 0.3, "bias_init": 0.1},
        {"name": "convB", "type": "conv", "inputs": ["data", "conv1"], "filters": 4, "size": 3, "pad": 1,
         "init_std": 0.3, "bias_init": 0.05},
        {"name": "lrn1", "type": "lrn", "inputs": ["convB"], **LRN},
        {"name": "pool1", "type": "maxpool", "inputs": ["lrn1"], "size": 3, "stride": 2},
        {"name": "r", "type": "relu", "inputs": ["pool1"]},
        {"name": "fc1", "type": "fc", "inputs": ["pool1"], "outputs": 8, "relu": True, "init_std": 0.3,
         "bias_init": 0.1},
        {"name": "drop1", "type": "dropout", "inputs": ["fc1"], "p": 0.5},
        {"name": "fc2", "type": "fc", "inputs": ["drop1", "r"], "outputs": classes, "init_std": 0.3},
        {"name": "loss", "type": "softmax", "inputs": ["fc2"]},
    ]


def ref_step(P, x, labels, mask):
    """Float64 forward and backward of small_dag from tests/reference.py -> (loss, grads dict)."""
    N = len(x)
    c1 = R.relu_forward(R.conv_forward(x, P["conv1.weight"], P["conv1.bias"], pad=PAD))
    cb = R.conv_forward(x, P["convB.weight0"], P["convB.bias"], pad=PAD) + R.conv_forward(c1, P["convB.weight1"], pad=PAD)
    l1 = R.lrn_forward(cb, **LRN)
    p1, am = R.max_pool_forward(l1, 3, 3, (2, 2), (0, 0))
    r = R.relu_forward(p1)
    f1 = R.relu_forward(R.fc_forward(p1.reshape(N, -1), P["fc1.weight"], P["fc1.bias"]))
    d1 = f1 * mask
    logits = R.fc_forward(d1, P["fc2.weight0"], P["fc2.bias"]) + R.fc_forward(r.reshape(N, -1), P["fc2.weight1"])
    loss, _, _, dlogits = R.softmax_cross_entropy(logits, labels)
    g = {}
    dd1, g["fc2.weight0"], g["fc2.bias"] = R.fc_backward(dlogits, d1, P["fc2.weight0"])
    dr, g["fc2.weight1"], _ = R.fc_backward(dlogits, r.reshape(N, -1), P["fc2.weight1"])
    df1 = R.relu_backward(f1, dd1 * mask)
    dp1, g["fc1.weight"], g["fc1.bias"] = R.fc_backward(df1, p1.reshape(N, -1), P["fc1.weight"])
    dp1 = dp1.reshape(p1.shape) + R.relu_backward(r, dr.reshape(r.shape))
    dl1 = R.max_pool_backward(dp1, am, l1.shape)
    dcb = R.lrn_backward(cb, dl1, **LRN)
    _, g["convB.weight0"], g["convB.bias"] = R.conv_backward(dcb, x, P["convB.weight0"], pad=PAD)
    dc1, g["convB.weight1"], _ = R.conv_backward(dcb, c1, P["convB.weight1"], pad=PAD)
    dc1 = R.relu_backward(c1, dc1)
    _, g["conv1.weight"], g["conv1.bias"] = R.conv_backward(dc1, x, P["conv1.weight"], pad=PAD)
    return loss, logits, g


def test_training_step_matches_reference(device, rng):
    net = Net(small_dag(), device=device, seed=int(rng.integers(1 << 30)))
    N = 6
    x = rng.standard_normal((N, 6, 6, 3)).astype(np.float32)
    labels = rng.integers(0, 5, N).astype(np.int32)
    stats = net.forward(x, labels, train=True, step=STEP, seed=SEED).numpy()
    net.backward()
    P = {name: p.value.numpy().astype(np.float64) for name, p in net.named_params()}
    mask = R.dropout_mask((N, 8), 0.5, SEED, dropout_counter(STEP, net.layer("drop1").index))
    loss, logits, grads = ref_step(P, x.astype(np.float64), labels, mask)
    assert abs(stats[0] - loss) / abs(loss) < 1e-5, (stats[0], loss)
    _, top1, top5, _ = R.softmax_cross_entropy(logits, labels)
    assert (stats[1], stats[2]) == (top1, top5)
    assert set(grads) == {name for name, _ in net.named_params()}
    for name, p in net.named_params():
        assert_close(p.grad.numpy(), grads[name], tol=1e-4, what=f"gradient of {name}")

    # Finite differences of the float64 reference forward agree with the reference backward, so the
    # composition above is itself right (a few parameters, the objective = the mean loss).
    for name in ("conv1.weight", "convB.weight1", "fc1.bias", "fc2.weight1"):
        def f(value, name=name):
            Q = dict(P)
            Q[name] = value
            return np.array(ref_step(Q, x.astype(np.float64), labels, mask)[0])
        check_gradient(grads[name], f, P[name], 1.0, rng, samples=8, tol=1e-4, what=f"reference d loss / d {name}")


def test_sgd_update_uses_multipliers(device, rng):
    net = Net(small_dag(), device=device, seed=3)
    x = rng.standard_normal((4, 6, 6, 3)).astype(np.float32)
    labels = rng.integers(0, 5, 4).astype(np.int32)
    net.forward(x, labels, train=True, step=0, seed=1)
    net.backward()
    before = {n: (p.value.numpy().astype(np.float64), p.velocity.numpy().astype(np.float64),
                  p.grad.numpy().astype(np.float64)) for n, p in net.named_params()}
    net.update(lr=0.1, momentum=0.9, weight_decay=0.01)
    for n, p in net.named_params():
        w, v, g = before[n]
        w_ref, _ = R.sgd_update(w, g, v, 0.1 * p.lr_mult, 0.9, 0.01 * p.wd_mult)
        assert_close(p.value.numpy(), w_ref, what=n)
    assert net.layer("conv1").bias_param.lr_mult == 2.0 and net.layer("conv1").bias_param.wd_mult == 0.0


def fc_dag():
    return [
        {"name": "data", "type": "data", "shape": [2, 2, 3]},
        {"name": "fa", "type": "fc", "inputs": ["data"], "outputs": 6, "relu": True, "init_std": 0.5},
        {"name": "fb", "type": "fc", "inputs": ["data"], "outputs": 6, "relu": True, "init_std": 0.5},
        {"name": "ra", "type": "relu", "inputs": ["fa"]},
        {"name": "join", "type": "fc", "inputs": ["ra", "fb"], "outputs": 4, "init_std": 0.5},
        {"name": "drop", "type": "dropout", "inputs": ["join"], "p": 0.25},
        {"name": "out", "type": "fc", "inputs": ["drop", "fb"], "outputs": 3, "init_std": 0.5},
        {"name": "loss", "type": "softmax", "inputs": ["out"]},
    ]


def _grads(net, x, y):
    stats = net.forward(x, y, train=True, step=2, seed=9).numpy()
    net.backward()
    return stats, {n: p.grad.numpy() for n, p in net.named_params()}


def test_cross_device_edges_become_copy_layers(rng):
    """Tower a on one placement, tower b ("fb", tower 1) on another: the Net inserts Copy layers where
    an edge crosses, and the result equals the single-placement net. Both towers are on "cpu": the
    placement is (device, tower), so the copies exist on one device too (tests/test_parallel.py has
    the two-tower AlexNet family)."""
    cfg = fc_dag()
    for d in cfg:
        d["device"] = "cpu"
    x = rng.standard_normal((5, 2, 2, 3)).astype(np.float32)
    y = rng.integers(0, 3, 5).astype(np.int32)
    plain = Net(cfg, seed=1)
    split_cfg = [dict(d, tower=1) if d["name"] == "fb" else d for d in cfg]
    split = Net(split_cfg, seed=1)
    assert sorted(l.name for l in split.copies) == ["data@cpu/1", "fb@cpu/0"]
    assert [l.type for l in split.layers].count("copy") == 2
    s1, g1 = _grads(plain, x, y)
    s2, g2 = _grads(split, x, y)
    np.testing.assert_array_equal(s1, s2)
    for n in g1:
        np.testing.assert_allclose(g2[n], g1[n], rtol=1e-6, atol=1e-7, err_msg=n)
    # copies are not part of the description; the tower is
    assert [d for d in split.config()["layers"] if d.get("tower")] == [
        {k: v for k, v in split_cfg[i].items() if k != "device"} for i, d in enumerate(split_cfg) if d.get("tower")]
    assert len(split.config()["layers"]) == len(cfg)


def test_explicit_copy_layer_and_devices(rng):
    cfg = fc_dag()
    cfg.append({"name": "fb_copy", "type": "copy", "inputs": ["fb"], "device": "cpu"})  # last: same indices
    cfg[-3]["inputs"] = ["drop", "fb_copy"]  # "out" reads the copy
    net = Net(cfg, device="cpu", seed=1)
    ref = Net(fc_dag(), device="cpu", seed=1)
    # same initial parameters (copy layers have none), same gradients
    x = rng.standard_normal((3, 2, 2, 3)).astype(np.float32)
    y = rng.integers(0, 3, 3).astype(np.int32)
    s1, g1 = _grads(ref, x, y)
    s2, g2 = _grads(net, x, y)
    np.testing.assert_allclose(s1, s2, rtol=1e-6)
    for n in g1:
        np.testing.assert_allclose(g2[n], g1[n], rtol=1e-5, atol=1e-7, err_msg=n)


def test_fc_dag_gradients_match_reference(device, rng):
    """Shared inputs (fb read by join and out), fused and standalone ReLU, two-input fc: FC-only."""
    net = Net(fc_dag(), device=device, seed=int(rng.integers(1 << 30)))
    x = rng.standard_normal((5, 2, 2, 3)).astype(np.float32)
    y = rng.integers(0, 3, 5).astype(np.int32)
    stats, g = _grads(net, x, y)
    P = {n: p.value.numpy().astype(np.float64) for n, p in net.named_params()}
    X = x.reshape(5, -1).astype(np.float64)
    mask = R.dropout_mask((5, 4), 0.25, 9, dropout_counter(2, net.layer("drop").index))
    fa = R.relu_forward(R.fc_forward(X, P["fa.weight"], P["fa.bias"]))
    fb = R.relu_forward(R.fc_forward(X, P["fb.weight"], P["fb.bias"]))
    ra = R.relu_forward(fa)
    join = R.fc_forward(ra, P["join.weight0"], P["join.bias"]) + R.fc_forward(fb, P["join.weight1"])
    d = join * mask
    out = R.fc_forward(d, P["out.weight0"], P["out.bias"]) + R.fc_forward(fb, P["out.weight1"])
    loss, _, _, dout = R.softmax_cross_entropy(out, y)
    assert abs(stats[0] - loss) < 1e-5 * abs(loss)
    ref = {}
    dd, ref["out.weight0"], ref["out.bias"] = R.fc_backward(dout, d, P["out.weight0"])
    dfb, ref["out.weight1"], _ = R.fc_backward(dout, fb, P["out.weight1"])
    djoin = dd * mask
    dra, ref["join.weight0"], ref["join.bias"] = R.fc_backward(djoin, ra, P["join.weight0"])
    dfb2, ref["join.weight1"], _ = R.fc_backward(djoin, fb, P["join.weight1"])
    dfa = R.relu_backward(fa, R.relu_backward(ra, dra))
    dfb = R.relu_backward(fb, dfb + dfb2)
    _, ref["fa.weight"], ref["fa.bias"] = R.fc_backward(dfa, X, P["fa.weight"])
    _, ref["fb.weight"], ref["fb.bias"] = R.fc_backward(dfb, X, P["fb.weight"])
    for n in ref:
        assert_close(g[n], ref[n], tol=1e-5, what=n)


def test_config_round_trip_json_and_ini(tmp_path):
    import json
    net = Net(fc_dag(), seed=0)
    p = tmp_path / "net.json"
    p.write_text(json.dumps(net.config()))
    assert Net(str(p)).config() == net.config()
    ini = tmp_path / "net.ini"
    ini.write_text("""
[data]
type = data
shape = [2, 2, 3]

[fa]
type = fc
inputs = data
outputs = 6
relu = true   # fused ReLU

[both]
type = fc
inputs = data, fa
outputs = 3

[loss]
type = softmax
inputs = both
""")
    n2 = Net(str(ini))
    assert n2.layer("both").inputs == ["data", "fa"] and n2.layer("fa").relu is True
    assert n2.num_classes == 3 and n2.input_shape == (2, 2, 3)


def test_graph_errors():
    with pytest.raises(ValueError, match="unknown input 'nope'"):
        Net([{"name": "data", "type": "data", "shape": [2, 2, 3]},
             {"name": "f", "type": "fc", "inputs": ["nope"], "outputs": 2}])
    with pytest.raises(ValueError, match="cycle"):
        Net([{"name": "data", "type": "data", "shape": [2, 2, 3]},
             {"name": "a", "type": "fc", "inputs": ["data", "b"], "outputs": 2},
             {"name": "b", "type": "fc", "inputs": ["a"], "outputs": 2}])
    with pytest.raises(ValueError, match="unknown type 'convolution'"):
        Net([{"name": "data", "type": "data", "shape": [2, 2, 3]},
             {"name": "c", "type": "convolution", "inputs": ["data"]}])
    with pytest.raises(ValueError, match="unknown option"):
        Net([{"name": "data", "type": "data", "shape": [2, 2, 3]},
             {"name": "f", "type": "fc", "inputs": ["data"], "outputs": 2, "filters": 3}])
    with pytest.raises(ValueError, match="input shape"):
        Net(fc_dag()).forward(np.zeros((2, 3, 3, 3), np.float32))


def test_summary_table():
    text = Net(small_dag(), seed=0).summary(print_it=False)
    assert "(N, 6, 6, 4)" in text and "(N, 2, 2, 4)" in text and "total" in text
    assert f"{Net(small_dag()).num_params:,}" in text
