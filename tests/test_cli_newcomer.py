"""The newcomer's path (issue 11): configs and CLI errors that say what is wrong, the train flags a
PyTorch user looks for, run folders, predict and plot. Tiny nets, built-in or random data, a few steps."""
import json
import os

import numpy as np
import pytest

import convnet
from convnet.__main__ import main
from convnet.net import load_config


def test_load_config_rejects_malformed_descriptions(tmp_path):
    with pytest.raises(ValueError, match="layers"):
        load_config({"layer": []})
    with pytest.raises(ValueError, match="list of layer dicts, got int"):
        load_config(3)
    with pytest.raises(ValueError, match=r"layer 1 is a str \('fc'\)"):
        load_config([{"name": "data", "type": "data", "shape": [4, 4, 3]}, "fc"])
    bad = tmp_path / "net.json"
    bad.write_text(json.dumps({"layers": {"name": "data"}}))
    with pytest.raises(ValueError, match=f"net config {bad}"):
        load_config(str(bad))
    layers, meta = load_config({"layers": [{"name": "d", "type": "data", "shape": [4, 4, 3]}], "meta": {"x": 1}})
    assert layers == [{"name": "d", "type": "data", "shape": [4, 4, 3]}] and meta == {"x": 1}


@pytest.mark.parametrize("shape", [None, [4, 4], [4, 4, 0], [4, 4.5, 3], [4, True, 3], "443"])
def test_data_layer_shape_is_checked(shape):
    cfg = [{"name": "data", "type": "data", "shape": shape},
           {"name": "fc", "type": "fc", "inputs": ["data"], "outputs": 2},
           {"name": "loss", "type": "softmax", "inputs": ["fc"]}]
    with pytest.raises(ValueError, match=r"data.*shape=\[H, W, C\] of whole numbers >= 1"):
        convnet.Net(cfg, allocate=False)


def test_cli_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "net.json"
    bad.write_text(json.dumps([{"name": "data", "type": "data", "shape": [4, 4]}]))
    assert main(["summary", "--model", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("convnet summary: error: ") and err.count("\n") == 1 and "shape" in err


# --------------------------------------------------------------------------------------------------
# Training runs: tiny nets on a slice of the built-in data, one or a few batches per epoch.

import importlib

from convnet.data import builtin, folder_image_size, open_data

trainmod = importlib.import_module("convnet.train")
evalmod = importlib.import_module("convnet.evaluate")
foldermod = importlib.import_module("convnet.run_folder")  # run_folder.RunFolder saves the checkpoints


def cli(argv) -> int:
    """main(argv)'s exit status, also when argparse exits (a bad flag: status 2)."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def tiny_net(size=32, classes=10):
    return [
        {"name": "data", "type": "data", "shape": [size, size, 3]},
        {"name": "conv1", "type": "conv", "inputs": ["data"], "filters": 4, "size": 3, "stride": 2, "relu": True},
        {"name": "pool1", "type": "maxpool", "inputs": ["conv1"]},
        {"name": "fc2", "type": "fc", "inputs": ["pool1"], "outputs": classes},
        {"name": "loss", "type": "softmax", "inputs": ["fc2"]},
    ]


@pytest.fixture(scope="module")
def small_data():
    return builtin(0, n_train=64, n_test=40)


def quick(data, out, **kw):
    """A one-epoch run of the tiny net: 2 batches of 32."""
    args = dict(model=tiny_net(), data=data, epochs=1, batch_size=32, out_dir=str(out), progress=False, workers=0)
    args.update(kw)
    return convnet.train(**args)


@pytest.fixture(scope="module")
def finished_run(small_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    quick(small_data, out, epochs=2)
    return out


def patch_data(monkeypatch, data):
    """The CLI's data names -> `data` (the train module opens every name through open_data)."""
    monkeypatch.setattr(trainmod, "open_data", lambda *a, **k: (*data, "builtin"))


def test_input_size_and_num_classes_of_a_named_model(small_data, tmp_path):
    r = convnet.train(model="default", input_size=32, num_classes=12, data=small_data, epochs=1, batch_size=32,
                      out_dir=False, progress=False, workers=0)
    assert r.net.input_shape == (32, 32, 3) and r.net.num_classes == 12
    with pytest.raises(ValueError, match=r"--input-size 32"):  # AlexNet on 32x32 images: the flag to use
        convnet.train(model="owt", data=small_data, epochs=1, out_dir=False, progress=False)
    with pytest.raises(ValueError, match="input_size=.*own input size"):
        convnet.train(model=tiny_net(), input_size=24, data=small_data, out_dir=False, progress=False)


def test_cli_input_size_and_num_classes(small_data, tmp_path, monkeypatch, capsys):
    patch_data(monkeypatch, small_data)
    out = tmp_path / "run"
    assert cli(["train", "--model", "small", "--input-size", "24", "--num-classes", "11", "--epochs", "1",
                 "--batch-size", "32", "--out", str(out), "--no-progress", "--workers", "0"]) == 0
    net = convnet.load_checkpoint(out)
    assert net.input_shape == (24, 24, 3) and net.num_classes == 11
    assert cli(["train", "--input-size", "0"]) == 2
    assert "--input-size: must be >= 1, got 0" in capsys.readouterr().err


def test_folder_image_size_rule():
    assert [folder_image_size(s) for s in (None, 227, 224, 300, 28, 32, 64)] == [256, 256, 256, 300, 32, 37, 74]
    with pytest.raises(ValueError, match="only image folders"):
        open_data("builtin", image_size=32)
    with pytest.raises(ValueError, match="image_size must be a whole number"):
        open_data("builtin", image_size=0)


@pytest.fixture
def image_folder(tmp_path, rng):
    """An ImageNet-style folder of 96x64 PNGs: 2 classes, 8 train and 4 val images each."""
    from PIL import Image
    root = tmp_path / "folder"
    for split, n in (("train", 8), ("val", 4)):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")
    return root


def test_image_folder_is_resized_to_the_models_input(image_folder, tmp_path, monkeypatch, capsys):
    """--model default on an image folder: images resized to 32 (28 x 8/7) and cropped to 28, not 28x28
    crops of 256x256 images; the checkpoint keeps the class names, the absolute data path and the size,
    and `eval --checkpoint <run folder>` reads the folder at that size."""
    monkeypatch.chdir(tmp_path)
    r = convnet.train(model="default", data="imagenet:folder", epochs=1, batch_size=8, out_dir="run",
                      progress=False, workers=0)
    meta = convnet.load_checkpoint("run").checkpoint
    assert r.net.input_shape == (28, 28, 3)
    assert meta["image_size"] == 32 and meta["class_names"] == ["cat", "dog"]
    assert meta["data"] == f"imagenet:{image_folder}" and os.path.isabs(image_folder)
    seen = []
    real = evalmod.check_fit
    monkeypatch.setattr(evalmod, "check_fit",
                        lambda net, ds, what: seen.append(ds.image_shape) or real(net, ds, what))
    monkeypatch.chdir(image_folder.parent.parent)  # eval from another folder: the path is absolute
    assert cli(["eval", "--checkpoint", str(tmp_path / "run")]) == 0
    assert seen == [(32, 32, 3)] and "8 images" in capsys.readouterr().out
    r2 = convnet.train(model="default", data=f"imagenet:{image_folder}", image_size=40, epochs=1, batch_size=8,
                       out_dir=False, progress=False, workers=0)
    assert r2.net.input_shape == (28, 28, 3)
    with pytest.raises(ValueError, match="only image folders"):
        convnet.train(data="builtin", image_size=40, out_dir=False, progress=False)
    with pytest.warns(RuntimeWarning, match="28x28 crops of 64x64 images"):  # asked for: said
        convnet.train(model="default", data=f"imagenet:{image_folder}", image_size=64, epochs=1, batch_size=8,
                      out_dir=False, progress=False, workers=0)


def test_default_lr_follows_the_batch_size(small_data, tmp_path, capsys):
    r = quick(small_data, tmp_path / "a", batch_size=16)
    assert r.history[0]["lr"] == pytest.approx(0.01 * 16 / 128)
    assert convnet.HParams(batch_size=256).resolved(big_net=False).lr == pytest.approx(0.02)
    assert convnet.HParams(batch_size=256, lr=0.5).resolved(big_net=False).lr == 0.5
    assert cli(["train", "--help"]) == 0
    assert "0.01 x batch-size / 128" in " ".join(capsys.readouterr().out.split())


def test_out_refuses_an_earlier_run_unless_resumed(small_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    quick(small_data, out)
    before = (out / "checkpoint.npz").read_bytes()
    with pytest.raises(ValueError, match=f"out_dir {out} holds an earlier run.*--resume"):
        quick(small_data, out)
    patch_data(monkeypatch, small_data)
    assert cli(["train", "--out", str(out), "--no-progress"]) == 2
    assert "holds an earlier run" in capsys.readouterr().err
    assert (out / "checkpoint.npz").read_bytes() == before  # nothing overwritten
    r = convnet.train(data=small_data, resume=str(out), epochs=2, progress=False, workers=0)
    assert [h["epoch"] for h in r.history] == [1, 2]
    crashed = tmp_path / "crashed"   # a run that died before its first checkpoint still counts
    crashed.mkdir()
    (crashed / "train.log").write_text("convnet: training ...\n")
    with pytest.raises(ValueError, match="earlier run"):
        quick(small_data, crashed)


def test_last_and_best_checkpoints_and_save_every(small_data, tmp_path, monkeypatch):
    written = []
    real = foldermod.save_checkpoint

    def save(path, net, meta):
        written.append((os.path.basename(path), meta["epoch"]))
        return real(path, net, meta)
    monkeypatch.setattr(foldermod, "save_checkpoint", save)
    r = quick(small_data, tmp_path / "run", epochs=5, save_every=2, lr=0.05)
    last = [e for name, e in written if name == "checkpoint.npz"]
    best = [e for name, e in written if name == "best.npz"]
    assert last == [2, 4, 5]
    errs = [h["val_top1_err"] for h in r.history]
    assert best[0] == 1 and best[-1] == 1 + int(np.argmin(errs))
    assert all(errs[b - 1] < min(errs[:b - 1], default=2) for b in best)  # written only on improvement
    b = convnet.load_checkpoint(tmp_path / "run" / "best.npz")
    assert b.checkpoint["epoch"] == best[-1] and b.checkpoint["class_names"] == list(small_data[0].class_names)


def test_resuming_a_finished_run_says_so(small_data, finished_run, capsys):
    before = (finished_run / "checkpoint.npz").read_bytes()
    for progress in (True, False):
        r = convnet.train(data=small_data, resume=str(finished_run), epochs=2, workers=0, progress=progress)
        err = capsys.readouterr().err
        assert "is a finished run (2/2 epochs)" in err and "--epochs" in err
        assert [h["epoch"] for h in r.history] == [1, 2]
    with pytest.raises(ValueError, match="keeps its net"):
        convnet.train(data=small_data, resume=str(finished_run), epochs=3, input_size=24, progress=False)
    assert (finished_run / "checkpoint.npz").read_bytes() == before


def test_eval_takes_a_run_folder_or_a_file(small_data, finished_run, monkeypatch, capsys):
    monkeypatch.setattr(evalmod, "PROGRESS_SECONDS", 0.0)
    monkeypatch.setattr(convnet.data, "builtin", lambda seed: small_data)  # open_data("builtin")
    assert cli(["eval", "--checkpoint", str(finished_run), "--batch-size", "16"]) == 0
    c = capsys.readouterr()
    assert cli(["eval", "--checkpoint", str(finished_run / "checkpoint.npz"), "--batch-size", "16"]) == 0
    c2 = capsys.readouterr()
    assert "40 images" in c.out and c.out.split(":", 1)[1] == c2.out.split(":", 1)[1]
    assert "validating 16/40 images" in c.err  # the progress line during validation
    assert cli(["eval", "--checkpoint", str(finished_run.parent / "nothing")]) == 2


def test_predict_prints_top5_class_names(small_data, finished_run, tmp_path, capsys):
    from PIL import Image
    images, labels = small_data[1].get_batch(np.arange(2))
    paths = []
    for i, im in enumerate(images):
        paths.append(str(tmp_path / f"img{i}.png"))
        Image.fromarray(im).save(paths[-1])
    assert cli(["predict", "--checkpoint", str(finished_run)] + paths) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    names = set(small_data[0].class_names)
    net = convnet.load_checkpoint(finished_run)
    probs = net.predict(images)
    for line, path, p in zip(lines, paths, probs):
        assert line.startswith(path + ": ")
        shown = [item.rsplit(" ", 1) for item in line[len(path) + 2:].split(", ")]
        assert len(shown) == 5 and {n for n, _ in shown} <= names
        best = small_data[0].class_names[int(np.argmax(p))]
        assert shown[0][0] == best and float(shown[0][1].rstrip("%")) == pytest.approx(100 * p.max(), abs=0.06)
    assert cli(["predict", "--checkpoint", str(finished_run), str(tmp_path / "missing.png")]) == 2
    assert "image not found" in capsys.readouterr().err


def test_predict_accepts_the_documented_ranges_only(small_data, finished_run):
    net = convnet.load_checkpoint(finished_run)
    images = small_data[1].get_batch(np.arange(4))[0]
    want = net.predict(images)
    np.testing.assert_allclose(net.predict(images.astype(np.float32)), want, rtol=1e-6)   # float, 0..255
    np.testing.assert_allclose(net.predict(images.astype(np.int64)), want, rtol=1e-6)
    with pytest.raises(ValueError, match=r"\[0, 1\].*multiply by 255"):
        net.predict(images / 255.0)
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        net.predict(images.astype(np.float32) * 2)
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        net.predict(images.astype(np.float32) - 128)
    with pytest.raises(ValueError, match="NaN"):
        net.predict(np.full(images.shape, np.nan, np.float32))
    with pytest.raises(ValueError, match="dtype"):
        net.predict(images.astype(bool))
    with pytest.raises(ValueError, match="do not fit"):
        net.predict(images[:, :16])


def test_plot_without_matplotlib_fails_before_training(small_data, tmp_path, monkeypatch, capsys):
    import sys
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # "import matplotlib" raises ImportError
    with pytest.raises(ImportError, match="pip install"):
        quick(small_data, tmp_path / "run", plot=True)
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written
    patch_data(monkeypatch, small_data)
    assert cli(["train", "--plot", "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    assert "matplotlib" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_plot_draws_an_existing_run(finished_run, capsys):
    pytest.importorskip("matplotlib")
    assert cli(["plot", str(finished_run)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(finished_run / "curves.png"), str(finished_run / "conv1_filters.png")]
    assert all(os.path.getsize(p) > 1000 for p in printed)
    assert cli(["plot", str(finished_run.parent)]) == 2  # not a run folder


def test_epoch_lines_on_stdout_and_in_the_run_log(small_data, tmp_path, capsys):
    quick(small_data, tmp_path / "run", epochs=2, progress=True)
    out = capsys.readouterr().out.splitlines()
    epochs = [line for line in out if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["1/2", "2/2"] and "val top-1 err" in epochs[0]
    log = (tmp_path / "run" / "train.log").read_text().splitlines()
    assert [line for line in log if line.startswith("epoch ")] == epochs
    assert log[0].startswith("convnet: training") and log[-1].startswith("convnet: done")


def test_help_shows_every_default_and_version(capsys):
    from convnet.__main__ import _parser
    p = _parser()
    sub = next(a for a in p._actions if a.dest == "command")
    for name, parser in sub.choices.items():
        for action in parser._actions:
            if action.option_strings and action.dest != "help" and action.nargs != 0 and not action.required:
                assert "default" in (action.help or ""), f"convnet {name} {action.option_strings[0]}"
    assert cli(["--version"]) == 0 and capsys.readouterr().out.strip() == f"convnet {convnet.__version__}"


@pytest.mark.parametrize("argv, names", [
    (["--lr-steps", "5,x"], "--lr-steps '5,x': want whole epochs"),
    (["--lr", "fast"], "--lr: want a number, got 'fast'"),
    (["--momentum", "1.5"], "--momentum 1.5: must be in [0, 1)"),
    (["--epochs", "0"], "--epochs: must be >= 1"),
    (["--eval-views", "3"], "--eval-views: invalid choice"),
])
def test_bad_flags_name_the_flag(argv, names, capsys):
    assert cli(["train"] + argv) == 2
    err = capsys.readouterr().err
    assert names in err and err.count("\n") == 1
