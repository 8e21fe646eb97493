"""Model parallelism: the paper's two-tower split (python/convnet/models.py two_tower_config) against
its single-device form (grouped convolutions, grouped LRN, block-assembled fc weights), the copy
layers the graph inserts and the bytes they move, training step for step, checkpoints across
placements, and the full AlexNet 2012 split.

The towers are placements (device, tower): ["cpu", "cpu"] runs the same graph with the same copy
nodes as two GPUs would, so everything here runs on the CPU; the CUDA cases (one GPU twice, two GPUs)
skip without them. The small net (67x67 input, widths 8/16/24/24/16, hidden 32/32) keeps every layer
type of AlexNet with pool5 at 3x3, so the fc6 block layout over (H, W, C) is exercised.
"""
import numpy as np
import pytest

import convnet
from convnet import models
from convnet.net import Net
from convnet.checkpoint import load_checkpoint, save_checkpoint

from conftest import _skip_reason
from gradcheck import assert_close, rel_error

SMALL = dict(widths=(8, 16, 24, 24, 16), hidden=(32, 32), num_classes=10, input_size=67, conv1=(5, 2, 0),
             init_std=0.1)


def _pairs():
    out = []
    for pair in (["cpu", "cpu"], ["cuda:0", "cuda:0"], ["cuda:0", "cuda:1"]):
        reasons = [r for r in map(_skip_reason, pair) if r]
        marks = [pytest.mark.skip(reason=reasons[0])] if reasons else []
        out.append(pytest.param(pair, marks=marks, id="+".join(pair)))
    return out


@pytest.fixture(params=_pairs())
def devices(request):
    """The two towers' devices: the CPU twice; one GPU twice; two GPUs (skip where absent)."""
    return request.param


def split_net(devices, dropout=0.0, seed=0):
    return Net(models.two_tower_config(**SMALL, dropout=dropout, devices=devices), seed=seed)


def grouped_net(device, split, dropout=0.0):
    """The single-device form, with the split net's parameters (and momentum) merged into it."""
    net = Net(models.two_tower_config(**SMALL, dropout=dropout, towers=1), device=device)
    net.load_state(models.merge_towers(split.state()))
    return net


def _batch(rng, n=6):
    x = (rng.standard_normal((n, 67, 67, 3)) * 2).astype(np.float32)
    y = rng.integers(0, 10, n).astype(np.int32)
    return x, y


def _grads(net):
    return {name: p.grad.numpy() for name, p in net.named_params()}


# --------------------------------------------------------------------------------------------------

def test_split_graph_has_the_papers_copies():
    net = split_net(["cpu", "cpu"])
    assert net.placements == [("cpu", 0), ("cpu", 1)]
    # the towers communicate only at conv3, fc6, fc7 and fc8 (plus the input, which both towers read)
    assert sorted((c.inputs[0], c.src_tower, c.tower) for c in net.copies) == [
        ("data", 0, 1), ("drop6a", 0, 1), ("drop6b", 1, 0), ("drop7b", 1, 0),
        ("pool2a", 0, 1), ("pool2b", 1, 0), ("pool5a", 0, 1), ("pool5b", 1, 0)]
    for name, towers in (("conv3a", 0), ("fc6b", 1), ("fc7a", 0), ("fc8", 0), ("conv4b", 1)):
        assert net.layer(name).tower == towers
    assert net.layer("conv4b").inputs == ["conv3b"]  # own tower: no copy
    grouped = Net(models.two_tower_config(**SMALL, towers=1), allocate=False)
    assert grouped.num_params == net.num_params and not grouped.copies
    state = net.state()
    back = models.split_towers(models.merge_towers(state))
    assert sorted(back) == sorted(state)
    for k in state:
        np.testing.assert_array_equal(back[k], state[k], err_msg=k)


def test_equivalent_to_grouped_single_device_net(devices, rng):
    """Forward output, statistics and every parameter gradient of the split net equal those of the
    grouped single-device net built from the same tensors, to float32 rounding."""
    split = split_net(devices, seed=int(rng.integers(1 << 30)))
    grouped = grouped_net(devices[0], split)
    x, y = _batch(rng)
    assert_close(split.forward(x).numpy(), grouped.forward(x).numpy(), what="logits")
    s_split = split.forward(x, y, train=True, step=3, seed=5).numpy()
    s_grouped = grouped.forward(x, y, train=True, step=3, seed=5).numpy()
    assert_close(s_split[0], s_grouped[0], what="loss")
    np.testing.assert_array_equal(s_split[1:], s_grouped[1:])  # top-1 / top-5 hits
    split.backward()
    grouped.backward()
    merged = models.merge_towers(_grads(split))
    ref = _grads(grouped)
    assert sorted(merged) == sorted(ref)
    for name in ref:
        assert_close(merged[name], ref[name], what=f"gradient of {name}")


def test_copies_move_exactly_the_split_tensors(rng):
    """Count the bytes the copy layers move in one training step and check them against the layer
    shapes: pool2 (conv3), pool5 (fc6), fc6 (fc7) both ways, fc7b to fc8's tower, the same bytes back
    as gradients, and the input to tower b (forward only)."""
    net = split_net(["cpu", "cpu"])
    x, y = _batch(rng, n=5)
    net.reset_copy_stats()
    net.train_step(x, y, lr=0.01, step=0, seed=1)
    shape = {l.name: l.out_shape for l in net.layers}
    n = 5

    def nbytes(name):
        return 4 * n * int(np.prod(shape[name]))
    assert shape["pool2a"] == (7, 7, 8) and shape["pool5b"] == (3, 3, 8) and shape["drop6a"] == (16,)
    expected = {
        "data@cpu/1": (4 * n * 67 * 67 * 3, 0),
        "pool2a@cpu/1": (nbytes("pool2a"),) * 2, "pool2b@cpu/0": (nbytes("pool2b"),) * 2,
        "pool5a@cpu/1": (nbytes("pool5a"),) * 2, "pool5b@cpu/0": (nbytes("pool5b"),) * 2,
        "drop6a@cpu/1": (nbytes("drop6a"),) * 2, "drop6b@cpu/0": (nbytes("drop6b"),) * 2,
        "drop7b@cpu/0": (nbytes("drop7b"),) * 2,
    }
    assert net.copy_stats() == expected
    assert {c[0]: (c[3], c[4]) for c in net.copy_plan(n)} == expected
    exchanged = sum(f + b for k, (f, b) in expected.items() if not k.startswith("data"))
    assert exchanged == 2 * 4 * n * (2 * 7 * 7 * 8 + 2 * 3 * 3 * 8 + 2 * 16 + 16)
    # a test-time pass moves the activations only
    net.reset_copy_stats()
    net.forward(x)
    assert net.copy_stats() == {k: (f, 0) for k, (f, _) in expected.items()}


def test_alexnet_2012_split_and_bytes_per_step():
    """The full paper net on ["cpu", "cpu"]: the split, 60,965,224 parameters (the same in the
    grouped form), and the copy plan at batch 128 (the README's table)."""
    net = convnet.alexnet("2012", devices=["cpu", "cpu"], allocate=False)
    assert net.num_params == 60_965_224
    assert convnet.alexnet("2012", towers=1, allocate=False).num_params == 60_965_224
    assert len(net.copies) == 8 and net.placements == [("cpu", 0), ("cpu", 1)]
    plan = {name: (fwd, bwd) for name, _, _, fwd, bwd in net.copy_plan(128)}
    MB = 128 * 4
    assert plan["data@cpu/1"] == (MB * 227 * 227 * 3, 0)
    assert plan["pool2a@cpu/1"] == plan["pool2b@cpu/0"] == (MB * 13 * 13 * 128,) * 2   # 11,075,584 B
    assert plan["pool5a@cpu/1"] == plan["pool5b@cpu/0"] == (MB * 6 * 6 * 128,) * 2     # 2,359,296 B
    assert plan["drop6a@cpu/1"] == plan["drop6b@cpu/0"] == plan["drop7b@cpu/0"] == (MB * 2048,) * 2
    total = sum(f + b for f, b in plan.values())
    assert total == 79_148_544 + 2 * (2 * 11_075_584 + 2 * 2_359_296 + 3 * 1_048_576)


def test_training_matches_grouped_net_step_for_step(devices, rng):
    """A few SGD steps (momentum, weight decay) of the split net and of the grouped net from the same
    start: the same loss and the same parameters after every step."""
    split = split_net(devices, seed=int(rng.integers(1 << 30)))
    grouped = grouped_net(devices[0], split)
    for step in range(4):
        x, y = _batch(rng)
        a = split.train_step(x, y, lr=0.05, step=step, seed=2).numpy()
        b = grouped.train_step(x, y, lr=0.05, step=step, seed=2).numpy()
        assert_close(a[0], b[0], what=f"loss at step {step}")
        merged = models.merge_towers(split.state())
        ref = grouped.state()
        for name in ref:
            assert_close(merged[name], ref[name], what=f"{name} after step {step}")


def test_training_with_dropout_matches_one_placement(rng):
    """With dropout (same seeds, masks keyed by (seed, step, layer)), the split net trains step for
    step like the same two-tower graph with every layer on one placement (no copies). (The grouped
    form draws one 32-wide mask where the towers draw two 16-wide ones, so it is compared without
    dropout above.)"""
    cfg = models.two_tower_config(**SMALL, dropout=0.5, devices=["cpu", "cpu"])
    split = Net(cfg, seed=3)
    flat = Net([{k: v for k, v in d.items() if k != "tower"} for d in cfg], seed=3)
    assert len(split.copies) == 8 and not flat.copies
    flat.load_state(split.state())
    for step in range(3):
        x, y = _batch(rng)
        a = split.train_step(x, y, lr=0.05, step=step, seed=11).numpy()
        b = flat.train_step(x, y, lr=0.05, step=step, seed=11).numpy()
        assert_close(a[0], b[0], what=f"loss at step {step}")
        sa, sb = split.state(), flat.state()
        for name in sb:
            assert_close(sa[name], sb[name], what=f"{name} after step {step}")
    # dropout was on: a test-time pass differs from a training pass
    x, y = _batch(rng)
    assert split.forward(x, y, train=True, step=9, seed=11).numpy()[0] != split.forward(x, y).numpy()[0]


def test_checkpoint_across_placements(devices, tmp_path, rng):
    """A checkpoint of the split net loads onto one device (towers kept: same graph, same copies) and
    onto two; one taken on one device loads onto the two towers' devices; the grouped form converts."""
    split = split_net(devices, seed=7)
    x, y = _batch(rng)
    split.train_step(x, y, lr=0.05, step=0, seed=1)
    logits = split.forward(x).numpy()
    path = save_checkpoint(tmp_path / "two.npz", split, {"epoch": 1})
    one = load_checkpoint(path, device="cpu")
    assert one.devices == ["cpu"] and len(one.copies) == 8
    assert_close(one.forward(x).numpy(), logits, what="logits on one device")
    # ... and back onto the two towers' devices
    path1 = save_checkpoint(tmp_path / "one.npz", one, {"epoch": 1})
    from convnet.checkpoint import read_checkpoint, restore as _restore
    meta, arrays = read_checkpoint(path1)
    two = Net(meta["config"], devices=devices)
    _restore(two, arrays, path1)
    assert two.devices == sorted(set(devices))
    assert_close(two.forward(x).numpy(), logits, what="logits back on two devices")
    st = two.state()
    for name, v in split.state().items():
        np.testing.assert_array_equal(st[name], v, err_msg=name)
    # the grouped single-device form from the same checkpoint
    grouped = Net(models.two_tower_config(**SMALL, towers=1))
    grouped.load_state(models.merge_towers(st))
    assert_close(grouped.forward(x).numpy(), logits, what="logits of the grouped form")


def test_grouped_lrn_is_per_tower(rng):
    """LRN groups=2 on (N, H, W, 2C) equals LRN on each half (the towers' own LRNs)."""
    from convnet.layers import LRN
    x = rng.standard_normal((2, 3, 4, 12)).astype(np.float32) * 3
    layer = LRN("n", ["x"], groups=2, alpha=0.1)
    layer.setup([(3, 4, 12)])
    y = convnet.full((2, 3, 4, 12), float("nan"))
    layer.forward([convnet.from_numpy(x)], y, None)
    halves = []
    for h in (x[..., :6], x[..., 6:]):
        yh = convnet.full(h.shape, float("nan"))
        convnet.ops.lrn_forward(convnet.from_numpy(np.ascontiguousarray(h)), yh, 5, 0.1)
        halves.append(yh.numpy())
    assert rel_error(y.numpy(), np.concatenate(halves, -1)) == 0.0
    with pytest.raises(ValueError, match="groups"):
        LRN("n", ["x"], groups=5).setup([(3, 4, 12)])


def test_devices_argument_errors():
    cfg = models.two_tower_config(**SMALL)
    with pytest.raises(ValueError, match="tower 1"):
        Net(cfg, devices=["cpu"], allocate=False)
    with pytest.raises(ValueError, match="not both"):
        Net(cfg, device="cpu", devices=["cpu", "cpu"], allocate=False)
    with pytest.raises(ValueError, match="two devices"):
        models.two_tower_config(**SMALL, devices=["cpu"])
    with pytest.raises(ValueError, match="only the two-tower"):
        convnet.get_model("owt", devices=["cpu", "cpu"], allocate=False)


def test_train_and_cli_with_devices(tmp_path, monkeypatch):
    """train(devices=[...]) and `--devices` split a two-tower config over the towers' devices; the run
    checkpoints, resumes and evaluates like any other."""
    import importlib
    from convnet.data import builtin
    cfg = models.two_tower_config(widths=(8, 16, 16, 16, 8), hidden=(32, 32), num_classes=10, input_size=28,
                                  conv1=(3, 1, 1), init_std="he")
    data = builtin(0, n_train=256, n_test=64)
    r = convnet.train(model=cfg, data=data, epochs=1, batch_size=64, lr_steps=[], out_dir=str(tmp_path / "run"),
                      progress=False, workers=1, devices="cpu,cpu")
    assert len(r.net.copies) == 8 and r.net.placements == [("cpu", 0), ("cpu", 1)]
    assert np.isfinite(r.history[0]["train_loss"])
    r2 = convnet.train(data=data, epochs=2, batch_size=64, lr_steps=[], resume=r.checkpoint, progress=False,
                       workers=1, devices=["cpu", "cpu"])
    assert len(r2.history) == 2 and len(r2.net.copies) == 8
    assert convnet.evaluate(load_checkpoint(r2.checkpoint), data[1])["n"] == 64
    import json
    path = tmp_path / "tt.json"
    path.write_text(json.dumps(cfg))
    from convnet.__main__ import main
    # The CLI builds the config file's net over --devices and checks it against the checkpoint (a
    # finished run: nothing more to train). "--data builtin" opens the small split above, not the
    # full built-in set (12,000 images made for a run that trains nothing).
    monkeypatch.setattr(importlib.import_module("convnet.train"), "open_data", lambda *a, **k: (*data, "builtin"))
    assert main(["train", "--model", str(path), "--data", "builtin", "--epochs", "2", "--devices", "cpu,cpu",
                 "--resume", r2.checkpoint, "--no-progress"]) == 0
