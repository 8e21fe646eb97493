"""train(), evaluate(), checkpoints, resume, predict and the CLI."""
import json
import os

import numpy as np
import pytest

import convnet
import importlib
trainmod = importlib.import_module("convnet.train")  # the module (convnet.train is the function)
ckptmod = importlib.import_module("convnet.checkpoint")
plotsmod = importlib.import_module("convnet.plots")
from convnet.data import ArrayDataset, augment, builtin
from convnet.net import Net, softmax

LINEAR_BASELINE = 0.227  # best linear softmax regression on the built-in set (data/builtin.py)


def mlp(size=8, classes=10):
    return [
        {"name": "data", "type": "data", "shape": [size, size, 3]},
        {"name": "fc1", "type": "fc", "inputs": ["data"], "outputs": 32, "relu": True},
        {"name": "drop1", "type": "dropout", "inputs": ["fc1"], "p": 0.5},
        {"name": "fc2", "type": "fc", "inputs": ["drop1"], "outputs": classes},
        {"name": "loss", "type": "softmax", "inputs": ["fc2"]},
    ]


def tiny_conv(size=12, classes=10):
    return [
        {"name": "data", "type": "data", "shape": [size, size, 3]},
        {"name": "conv1", "type": "conv", "inputs": ["data"], "filters": 4, "size": 3, "pad": 1, "relu": True},
        {"name": "rnorm1", "type": "lrn", "inputs": ["conv1"]},
        {"name": "pool1", "type": "maxpool", "inputs": ["rnorm1"], "size": 3, "stride": 2},
        {"name": "drop1", "type": "dropout", "inputs": ["pool1"], "p": 0.5},
        {"name": "fc2", "type": "fc", "inputs": ["drop1"], "outputs": classes},
        {"name": "loss", "type": "softmax", "inputs": ["fc2"]},
    ]


def random_split(rng, n, size=10, classes=10, stats_from=None):
    images = rng.integers(0, 256, (n, size, size, 3)).astype(np.uint8)
    labels = (np.arange(n) % classes).astype(np.int32)
    return ArrayDataset(images, labels, [str(c) for c in range(classes)], stats_from=stats_from)


@pytest.fixture
def tiny_data(rng):
    train = random_split(rng, 96)
    return train, random_split(rng, 40, stats_from=train)


def states_equal(a, b):
    sa, sb = a.state(), b.state()
    assert sa.keys() == sb.keys()
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)


# --------------------------------------------------------------------------------------------------

def test_short_run_beats_linear_baseline(tmp_path):
    """The default small net on a subset of the built-in data, 2 epochs: the loss falls and test
    accuracy beats the best linear classifier's (22.7 %)."""
    data = builtin(0, n_train=2560, n_test=500)
    r = convnet.train(data=data, epochs=2, lr_steps=[], out_dir=str(tmp_path), progress=False, workers=1)
    h = r.history
    assert len(h) == 2 and h[1]["train_loss"] < h[0]["train_loss"]
    assert h[1]["val_top1_err"] < 1 - LINEAR_BASELINE, h
    assert os.path.exists(r.checkpoint)
    log = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert [e["epoch"] for e in log] == [1, 2] and {"lr", "images_per_s", "val_top5_err"} <= set(log[0])


@pytest.mark.slow
def test_default_run_reaches_90_percent(tmp_path):
    r = convnet.train(out_dir=str(tmp_path), progress=False)
    assert r.test_accuracy >= 0.90, r.history[-1]


@pytest.mark.parametrize("model", [mlp(), tiny_conv(8)], ids=["mlp", "conv"])
def test_resume_is_bit_exact(tmp_path, tiny_data, model):
    kw = dict(model=model, data=tiny_data, batch_size=16, lr=0.05, seed=5, progress=False, workers=2)
    full = convnet.train(epochs=3, lr_steps=[2], out_dir=str(tmp_path / "full"), **kw)
    part = convnet.train(epochs=1, lr_steps=[2], out_dir=str(tmp_path / "part"), **kw)
    kw.pop("model")
    resumed = convnet.train(epochs=3, lr_steps=[2], resume=True, out_dir=str(tmp_path / "part"),
                            **{k: v for k, v in kw.items() if k != "lr"})
    states_equal(full.net, resumed.net)  # parameters and momentum buffers, bit for bit
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert [h["lr"] for h in resumed.history] == [h["lr"] for h in full.history] == pytest.approx([0.05, 0.05, 0.005])
    for a, b in zip(full.history, resumed.history):
        assert a["train_loss"] == b["train_loss"] and a["val_top1_err"] == b["val_top1_err"]
    assert part.history[0]["train_loss"] == full.history[0]["train_loss"]


def test_checkpoint_write_is_atomic(tmp_path, tiny_data, monkeypatch):
    r = convnet.train(mlp(), tiny_data, epochs=1, batch_size=16, out_dir=str(tmp_path), progress=False)
    path = r.checkpoint
    before = open(path, "rb").read()
    real_savez = np.savez

    def crash(f, **arrays):
        real_savez(f, **{k: arrays[k] for k in list(arrays)[:2]})  # half a file, then the "kill"
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(ckptmod.np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        convnet.train(data=tiny_data, epochs=2, resume=path, progress=False)
    monkeypatch.setattr(ckptmod.np, "savez", real_savez)
    assert open(path, "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == ["best.npz", "checkpoint.npz", "log.jsonl", "train.log"]  # no temp, no lock
    net = convnet.load_checkpoint(path)
    states_equal(net, r.net)
    assert net.checkpoint["epoch"] == 1


def test_corrupt_and_mismatched_checkpoints(tmp_path, tiny_data):
    r = convnet.train(mlp(), tiny_data, epochs=1, batch_size=16, out_dir=str(tmp_path / "run"), progress=False)
    data = open(r.checkpoint, "rb").read()
    bad = tmp_path / "truncated.npz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"checkpoint {bad}.*corrupt"):
        convnet.load_checkpoint(bad)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="junk.npz"):
        convnet.train(data=tiny_data, resume=str(junk), progress=False)
    other = tmp_path / "other.npz"
    np.savez(other, weights=np.zeros(3))
    with pytest.raises(ValueError, match="other.npz"):
        convnet.load_checkpoint(other)
    with pytest.raises(ValueError, match="different net"):
        convnet.train(model=mlp(classes=12), data=tiny_data, resume=r.checkpoint, epochs=2, progress=False)
    with pytest.raises(FileNotFoundError, match="nothere.npz"):
        convnet.load_checkpoint(tmp_path / "nothere.npz")


def test_ten_view_evaluation_equals_manual_average(rng, tiny_data):
    train, test = tiny_data
    net = Net(mlp(size=8), seed=int(rng.integers(1 << 30)))
    net.mean = train.mean
    got = convnet.evaluate(net, test, views=10, batch_size=16, workers=0)
    images, labels = test.get_batch(np.arange(len(test)))
    views = augment.ten_views(images, 8)                       # (10, N, 8, 8, 3)
    mean_views = augment.ten_views(train.mean[None], 8)[:, 0]  # the mean image cropped alike
    probs = np.mean([softmax(net.logits(augment.normalize(views[v], mean_views[v], net.input_scale)))
                     for v in range(10)], axis=0)
    order = np.argsort(-probs, axis=1)
    top1 = np.mean(order[:, 0] == labels)
    top5 = np.mean((order[:, :5] == labels[:, None]).any(axis=1))
    assert abs(got["top1_err"] - (1 - top1)) < 1e-12 and abs(got["top5_err"] - (1 - top5)) < 1e-12
    one = convnet.evaluate(net, test, views=1, workers=2)
    centre = net.predict(images)  # predict preprocesses like the test loader: centre crop, mean, scale
    assert abs(one["top1_err"] - (1 - np.mean(centre.argmax(1) == labels))) < 1e-12
    np.testing.assert_allclose(centre.sum(axis=1), 1.0, rtol=1e-5)


def test_predict_preprocessing_matches_loader(rng, tiny_data):
    train, test = tiny_data
    net = Net(mlp(size=8), seed=0)
    net.mean = train.mean
    loader = convnet.data.BatchLoader(test, 40, train=False, crop=8, workers=0)
    x, _ = next(iter(loader))
    images, _ = test.get_batch(np.arange(40))
    np.testing.assert_array_equal(net.preprocess(images), x)
    np.testing.assert_allclose(net.predict(images), net.predict(x, preprocess=False), rtol=1e-6)


def test_bad_inputs_give_clear_errors(tmp_path):
    missing = tmp_path / "no" / "cifar"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        convnet.train(data=f"cifar10:{missing}", progress=False)
    with pytest.raises(FileNotFoundError, match="imagenet"):
        convnet.train(data=f"imagenet:{tmp_path / 'imagenet'}", progress=False)
    with pytest.raises(ValueError, match=r"227x227x3.*32x32x3"):
        convnet.train(model=convnet.alexnet("2012", num_classes=10, allocate=False),
                      data=builtin(0, n_train=10, n_test=10), progress=False)
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        convnet.train(model="vgg", data=builtin(0, n_train=10, n_test=10), progress=False)
    with pytest.raises(ValueError, match="unknown data"):
        convnet.train(data="svhn", progress=False)


def test_plateau_schedule():
    s = trainmod.Schedule("plateau", 0.01, patience=2)
    for err in (0.5, 0.4, 0.41, 0.40):  # two epochs without improvement -> lr / 10
        s.end_epoch(err)
    assert s.lr_for(4) == pytest.approx(0.001)
    s2 = trainmod.Schedule("plateau", 0.01, patience=2, state=s.state())
    assert s2.lr == s.lr and s2.best == s.best and s2.bad == s.bad
    st = trainmod.Schedule("step", 0.01, [3, 5])
    assert [st.lr_for(e) for e in range(6)] == pytest.approx([0.01] * 3 + [0.001] * 2 + [0.0001])


def test_cli_train_eval_and_plots(tmp_path, tiny_data, monkeypatch, capsys):
    from convnet.__main__ import main
    pytest.importorskip("matplotlib")
    fake_open = lambda data, *a, **k: (*tiny_data, "tiny")  # noqa: E731
    monkeypatch.setattr(trainmod, "open_data", fake_open)
    monkeypatch.setattr(convnet.data, "open_data", fake_open)  # evaluate() opens names through it
    cfg = tmp_path / "net.json"
    cfg.write_text(json.dumps(tiny_conv(8)))
    out = tmp_path / "run"
    assert main(["train", "--model", str(cfg), "--epochs", "1", "--batch-size", "16", "--out", str(out),
                 "--plot", "--no-progress"]) == 0
    assert "final: test top-1 accuracy" in capsys.readouterr().out
    assert {"checkpoint.npz", "log.jsonl", "curves.png", "conv1_filters.png"} <= set(os.listdir(out))
    assert main(["eval", "--checkpoint", str(out / "checkpoint.npz"), "--views", "10"]) == 0
    assert "top-1 error" in capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(tmp_path / "missing.npz")]) == 2


def test_filter_grid():
    w = np.random.default_rng(0).standard_normal((10, 5, 5, 3))
    g = plotsmod.filter_grid(w)
    assert g.shape == (3 * 6 + 1, 4 * 6 + 1, 3) and g.min() >= 0 and g.max() <= 1
