"""Reliability (issue 12), the file side: image folders, run folders and checkpoints, the CLI, and
training that diverges. The op and tensor side is tests/test_robustness.py.

Categories: 3 a non-finite loss stops training (naming the step, the layer and the last good
checkpoint) and bad hyper-parameters are refused; 7 real-world image folders (symlink loops,
decompression bombs, 16-bit PNGs, bad files skipped, counted and summarised); 8 run folders (a kill
-9 during a checkpoint write, log.jsonl after kill + resume, two trainers on one folder, a crafted
checkpoint config); 9 every user error of the CLI is one "convnet <command>: error:" line, exit 2.
Cases that kill a process run it in a subprocess.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import convnet
from convnet.__main__ import main
from convnet.checkpoint import read_checkpoint
from convnet.data import BatchLoader, imagenet_folder
from convnet.data.imagenet import load_image

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402


def save(path, array, mode=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)


# ------------------------------------------------------------------------------------------------
# 7. real-world image folders


@pytest.fixture
def messy_tree(tmp_path):
    """train/{a,b}, val/{a,b} with good images and one of each kind of bad entry in train/a."""
    rng = np.random.default_rng(0)
    root = tmp_path / "folder"
    for split in ("train", "val"):
        for c in ("a", "b"):
            for i in range(2):
                save(str(root / split / c / f"{i}.png"), rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
    a = root / "train" / "a"
    os.symlink("loop.png", a / "loop.png")                 # a symlink loop (ELOOP)
    os.symlink("nowhere.jpg", a / "dangling.jpg")          # a link to nothing
    os.mkdir(a / "folder.png")                             # a folder with an image name
    (a / "empty.jpg").write_bytes(b"")                     # an empty file
    (a / "junk.png").write_bytes(b"not a PNG at all")      # found only by decoding
    (a / "notes.txt").write_text("not an image name: ignored, not skipped")
    os.symlink("selfloop", root / "train" / "selfloop")    # a class-level symlink loop
    return root


def test_image_folder_scan_skips_bad_entries(messy_tree):
    with pytest.warns(RuntimeWarning, match="skipped 5 bad entries, kept 5 images") as record:
        train, val = imagenet_folder(messy_tree, size=16)
    message = str(record[0].message)
    for name in ("loop.png", "dangling.jpg", "folder.png", "empty.jpg", "selfloop"):
        assert name in message
    assert "notes.txt" not in message
    reasons = dict(train.skipped)
    a = str(messy_tree / "train" / "a")
    assert "symbolic links" in reasons[os.path.join(a, "loop.png")]
    assert "No such file" in reasons[os.path.join(a, "dangling.jpg")]
    assert "not a regular file" in reasons[os.path.join(a, "folder.png")]
    assert "empty" in reasons[os.path.join(a, "empty.jpg")]
    # the counts exclude what was skipped: 4 good + junk.png (bad only when decoded)
    assert len(train) == 5 and len(val) == 4 and train.class_names == ["a", "b"]
    # decoding junk.png fails once, is remembered and joins `skipped` with its reason
    loader = BatchLoader(train, batch_size=5, train=False, workers=0)
    with pytest.warns(RuntimeWarning, match="junk.png"):
        batches = list(loader)
    assert [len(y) for _, y in batches] == [5] and loader.skipped == [os.path.join(a, "junk.png")]
    assert len(train.skipped) == 6 and train.skipped[-1][0] == os.path.join(a, "junk.png")


def test_evaluate_leaves_unreadable_images_out_of_its_counts(messy_tree):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train, _ = imagenet_folder(messy_tree, size=16)
        net = convnet.Net([{"name": "data", "type": "data", "shape": [16, 16, 3]},
                           {"name": "fc", "type": "fc", "inputs": ["data"], "outputs": 2},
                           {"name": "loss", "type": "softmax", "inputs": ["fc"]}], device="cpu")
        net.mean = np.zeros(3, np.float32)
        r = convnet.evaluate(net, train, batch_size=2, workers=0)
    assert r["n"] == 4 and r["skipped"] == [str(messy_tree / "train" / "a" / "junk.png")]
    assert 0 <= r["top1_err"] <= 1


def test_decompression_bombs_are_bounded():
    # A 1 x 20000 PNG is ~100 bytes; "shorter side to 256" used to make it a 256 x 5,120,000 image
    # (3.9 GB). The resize now reads only the centre square: it fits in a 200 MB address space.
    out = run_isolated("""
        import resource, tempfile, os
        import numpy as np
        from PIL import Image
        from convnet.data.imagenet import load_image
        d = tempfile.mkdtemp()
        Image.new("RGB", (20000, 1), (200, 10, 10)).save(os.path.join(d, "wide.png"))
        Image.new("RGB", (1, 5000), (10, 200, 10)).save(os.path.join(d, "tall.png"))
        with open("/proc/self/statm") as f:
            cap = int(f.read().split()[0]) * resource.getpagesize() + (200 << 20)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        for name, rgb in (("wide.png", (200, 10, 10)), ("tall.png", (10, 200, 10))):
            image = load_image(os.path.join(d, name), 256)
            assert image.shape == (256, 256, 3) and (image == rgb).all(), name
        print("OK")
    """)
    assert "OK" in out


def test_images_over_the_pixel_bound_are_refused_before_decoding(tmp_path):
    path = str(tmp_path / "big.png")
    Image.new("L", (3000, 3000)).save(path)  # 9 M pixels, a few kB compressed
    with pytest.raises(ValueError, match="9000000 pixels, more than the 4000000"):
        load_image(path, 64, max_pixels=4_000_000)
    assert load_image(path, 64).shape == (64, 64, 3)  # under the default bound


def test_sixteen_bit_png_is_scaled_not_white(tmp_path):
    grey = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    path = str(tmp_path / "g16.png")
    Image.fromarray(grey).save(path)
    assert Image.open(path).mode.startswith("I")
    image = load_image(path, 32).astype(int)
    want = np.rint(grey / 257.0).astype(int)
    assert image.shape == (32, 32, 3)
    assert np.abs(image - want[..., None]).max() <= 1     # the bilinear filter at scale 1: exact or +-1
    assert image.min() <= 1 and image.max() >= 254 and 100 < image.mean() < 155


def test_center_box_resize_equals_resize_then_crop(rng):
    # load_image resamples only the centre box; the pixels are those of resize + crop (+-1 rounding)
    for h, w, size in [(50, 100, 32), (375, 500, 64), (300, 200, 64), (41, 41, 41)]:
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        left, top = (nw - size) // 2, (nh - size) // 2
        full = np.asarray(im.resize((nw, nh), Image.BILINEAR).crop((left, top, left + size, top + size)))
        path = f"/tmp/convnet-box-{os.getpid()}.png"
        im.save(path)
        try:
            mine = load_image(path, size)
        finally:
            os.remove(path)
        assert np.abs(mine.astype(int) - full.astype(int)).max() <= 1


# ------------------------------------------------------------------------------------------------
# helpers for training runs in a subprocess


def run_isolated(code: str, timeout: float = 180.0, check: bool = True):
    """Run `code` in a fresh interpreter; fail (naming the signal) unless it exits 0 (when `check`)."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
        pytest.fail(f"subprocess {how}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}")
    return proc.stdout if check else proc


TRAINER = """
import os, signal, sys
import numpy as np
import convnet
from convnet.data import ArrayDataset
rng = np.random.default_rng(0)
def split(n, stats_from=None):
    return ArrayDataset(rng.integers(0, 256, (n, 8, 8, 3)).astype(np.uint8), (np.arange(n) % 4).astype(np.int32),
                        list("abcd"), stats_from=stats_from)
train = split(64)
data = (train, split(16, train))
MODEL = [{"name": "data", "type": "data", "shape": [8, 8, 3]},
         {"name": "fc1", "type": "fc", "inputs": ["data"], "outputs": 16, "relu": True},
         {"name": "fc2", "type": "fc", "inputs": ["fc1"], "outputs": 4},
         {"name": "loss", "type": "softmax", "inputs": ["fc2"]}]
def run(out, epochs, resume=None, **kw):
    return convnet.train(model=None if resume else MODEL, data=data, epochs=epochs, batch_size=16, workers=0,
                         progress=False, out_dir=out, resume=resume, **kw)
"""


def epochs_in_log(folder):
    with open(os.path.join(folder, "log.jsonl")) as f:
        return [json.loads(line)["epoch"] for line in f]


# ------------------------------------------------------------------------------------------------
# 8. run folders and checkpoints


@pytest.mark.parametrize("when", ["mid-write", "after-checkpoint"])
def test_kill_during_a_run_then_resume(tmp_path, when):
    out = str(tmp_path / "run")
    # SIGKILL in epoch 2: half-way through writing checkpoint.npz's temp file, or just after the
    # checkpoint was replaced (before the log line): no clean-up code runs in either case.
    killer = {
        "mid-write": """
import numpy as _np
real = _np.savez
calls = []
def savez(f, **arrays):
    calls.append(1)
    if len(calls) == 4:  # epoch 2: best.npz is call 3, checkpoint.npz call 4
        f.write(b"PK" + b"x" * 5000); f.flush(); os.kill(os.getpid(), signal.SIGKILL)
    return real(f, **arrays)
_np.savez = savez
""",
        "after-checkpoint": """
import convnet.run_folder as T  # where train() saves the run folder's checkpoints
real = T.save_checkpoint
def save(path, net, meta):
    r = real(path, net, meta)
    if meta["epoch"] == 2 and path.endswith("checkpoint.npz"):
        os.kill(os.getpid(), signal.SIGKILL)
    return r
T.save_checkpoint = save
"""}[when]
    proc = run_isolated(TRAINER + killer + f"\nrun({out!r}, 3)\n", check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = os.listdir(out)
    if when == "mid-write":
        assert any(".tmp-" in name for name in left), left      # the killed writer's temp is there
    assert ".lock" in left                                      # and its lock
    run_isolated(TRAINER + f"\nrun({out!r}, 3, resume={out!r})\n")
    names = sorted(os.listdir(out))
    assert not [n for n in names if ".tmp-" in n or n == ".lock"], names
    assert epochs_in_log(out) == [1, 2, 3]                      # each epoch once
    meta, _ = read_checkpoint(out)
    assert meta["epoch"] == 3 and [h["epoch"] for h in meta["history"]] == [1, 2, 3]


def test_second_trainer_on_a_run_folder_is_refused(tmp_path):
    out = str(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", TRAINER + f"""
import convnet.run_folder as T  # where train() saves the run folder's checkpoints
real = T.save_checkpoint
def save(path, net, meta):
    r = real(path, net, meta)
    if path.endswith("checkpoint.npz"):
        print("HOLDING", flush=True)
        import time; time.sleep(60)
    return r
T.save_checkpoint = save
run({out!r}, 2)
"""], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "HOLDING"
        before = sorted(os.listdir(out))
        proc = run_isolated(TRAINER + f"""
from convnet.checkpoint import RunLockedError
try:
    run({out!r}, 2, resume={out!r})
except RunLockedError as e:
    print("REFUSED", e)
""")
        assert "REFUSED" in proc and f"pid {holder.pid}" in proc, proc
        assert sorted(os.listdir(out)) == before                   # nothing written by the second
    finally:
        holder.kill()
        holder.wait()


def crafted_checkpoint(path, meta):
    np.savez(path, meta=np.array(json.dumps({"format": "convnet-checkpoint-v1", **meta})))


@pytest.mark.parametrize("config", ["/etc/passwd", {"layers": "/etc/passwd"}, ["/etc/passwd"],
                                    {"layers": ["/etc/passwd"]}, 7, None])
def test_crafted_checkpoint_config_is_never_opened(tmp_path, capsys, config):
    path = str(tmp_path / "c.npz")
    crafted_checkpoint(path, {"config": config})
    assert main(["eval", "--checkpoint", path]) == 2
    err = capsys.readouterr()
    assert "root:" not in err.out + err.err
    lines = err.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"convnet eval: error: checkpoint {path}"), err.err


# ------------------------------------------------------------------------------------------------
# 9. the CLI: every user error is one "convnet <command>: error: ..." line, exit 2

@pytest.fixture
def small_builtin(monkeypatch):
    """`--data builtin` as 40 + 20 random 32x32 images (the real set takes seconds to draw)."""
    from convnet.data import ArrayDataset

    def builtin(seed=0):
        rng = np.random.default_rng(seed)
        def split(n, stats_from=None):
            return ArrayDataset(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), np.arange(n) % 10,
                                [str(c) for c in range(10)], stats_from=stats_from)
        train = split(40)
        return train, split(20, train)
    monkeypatch.setattr(convnet.data, "builtin", builtin)


GOOD_LAYERS = [{"name": "data", "type": "data", "shape": [32, 32, 3]},
               {"name": "fc", "type": "fc", "inputs": ["data"], "outputs": 10},
               {"name": "loss", "type": "softmax", "inputs": ["fc"]}]


def with_layer(**changes):
    layers = json.loads(json.dumps(GOOD_LAYERS))
    layers[1].update(changes)
    return json.dumps(layers)


BAD_CONFIGS = {  # file text -> a word the error names
    "{not json": "invalid JSON",
    "[1, 2, 3]": "every layer is a dict",
    '{"foo": 1}': "want a list of layers",
    '{"layers": 5}': "want a list of layers",
    '"just a string"': "want a list of layers",
    "[{\"name\": \"data\"}]": "needs 'name' and 'type'",
    with_layer(type="zzz"): "unknown type",
    with_layer(inputs=["nope"]): "unknown input",
    with_layer(inputs=[1]): "inputs must be a list of layer names",
    with_layer(outputs="ten"): "layer 'fc' (fc)",
    with_layer(outputs=-3): "outputs must be >= 1",
    with_layer(bogus=1): "unknown option",
    with_layer(init_std="wide"): "init_std",
    with_layer(init_std=float("nan")): "init_std must be a finite number",
    with_layer(outputs=2.5): "outputs must be a whole number",
    with_layer(outputs=True): "outputs must be a whole number",
    with_layer(relu="maybe"): "relu must be true or false",
    with_layer(lr_mult=-1): "lr_mult must be a finite number >= 0",
    with_layer(wd_mult=float("inf")): "wd_mult",
    json.dumps(GOOD_LAYERS[:1] + [{"name": "n", "type": "lrn", "inputs": ["data"], "alpha": float("nan")},
                                  {**GOOD_LAYERS[1], "inputs": ["n"]}] + GOOD_LAYERS[2:]): "alpha",
    json.dumps(GOOD_LAYERS[:1] + [{"name": "n", "type": "lrn", "inputs": ["data"], "size": 0},
                                  {**GOOD_LAYERS[1], "inputs": ["n"]}] + GOOD_LAYERS[2:]): "size must be >= 1",
    json.dumps(GOOD_LAYERS[:1] + [{"name": "p", "type": "maxpool", "inputs": ["data"], "size": 2.5},
                                  {**GOOD_LAYERS[1], "inputs": ["p"]}] + GOOD_LAYERS[2:]): "size must be a whole",
    json.dumps([{**GOOD_LAYERS[0], "shape": [32, 32, 0]}] + GOOD_LAYERS[1:]): "positive sizes",
    json.dumps([{**GOOD_LAYERS[0], "shape": "32"}] + GOOD_LAYERS[1:]): "needs shape",
    json.dumps([{**GOOD_LAYERS[0], "shape": [2**40, 2**40, 3]}] + GOOD_LAYERS[1:]): "layer",
    "not an ini file\n": "no section headers",
    "[data]\ntype = data\nshape = a, b, c\n": "layer 'data' (data)",
}


@pytest.mark.parametrize("text", list(BAD_CONFIGS), ids=range(len(BAD_CONFIGS)))
@pytest.mark.parametrize("command", ["train", "summary"])
def test_cli_bad_net_configs_are_one_line(tmp_path, capsys, small_builtin, text, command):
    ext = ".ini" if text.startswith(("not an ini", "[data]")) else ".json"
    path = str(tmp_path / ("net" + ext))
    with open(path, "w") as f:
        f.write(text)
    argv = [command, "--model", path] + (["--out", str(tmp_path / "run"), "--epochs", "1", "--no-progress"]
                                         if command == "train" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"convnet {command}: error: "), err
    assert BAD_CONFIGS[text] in err[0], err[0]
    assert not os.path.exists(tmp_path / "run" / "checkpoint.npz")


@pytest.mark.parametrize("argv, words", [
    (["eval", "--checkpoint", "x", "--batch-size", "-1"], "--batch-size"),
    (["eval", "--checkpoint", "x", "--batch-size", "0"], "--batch-size"),
    (["eval", "--checkpoint", "x", "--views", "3"], "--views"),
    (["eval", "--checkpoint", "/nonexistent"], "checkpoint not found"),
    (["train", "--lr", "nan"], "--lr"), (["train", "--lr", "-1"], "--lr"), (["train", "--lr", "inf"], "--lr"),
    (["train", "--momentum", "5"], "--momentum"), (["train", "--momentum", "1"], "--momentum"),
    (["train", "--weight-decay", "-1"], "--weight-decay"), (["train", "--lighting", "nan"], "--lighting"),
    (["train", "--epochs", "0"], "--epochs"), (["train", "--batch-size", "x"], "--batch-size"),
    (["train", "--lr-steps", "a,b"], "--lr-steps"), (["train", "--data", "bogus"], "unknown data"),
    (["train", "--data", "cifar10:/nonexistent"], "not found"), (["train", "--model", "."], "net config ."),
    (["train", "--device", "tpu"], "tpu"), (["train", "--resume", "/nonexistent"], "not found"),
    (["predict", "--checkpoint", "/nonexistent", "a.png"], "checkpoint not found"),
    (["summary", "--model", "resnet"], "unknown model"),
])
def test_cli_bad_flags_are_one_line(tmp_path, capsys, monkeypatch, small_builtin, argv, words):
    monkeypatch.chdir(tmp_path)
    try:
        rc = main(argv + (["--out", "run", "--no-progress"] if argv[0] == "train" and "--resume" not in argv else []))
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"convnet {argv[0]}: error: ") and words in err[0], err
    assert not os.path.exists(tmp_path / "run" / "checkpoint.npz")


def test_eval_of_a_crafted_data_name_is_an_error_line(tmp_path, capsys, small_builtin):
    # a checkpoint's data name is a data name, not a file to read: "/etc/passwd" is unknown data
    net = convnet.Net(GOOD_LAYERS, device="cpu")
    net.mean = np.zeros(3, np.float32)
    path = str(tmp_path / "c.npz")
    convnet.save_checkpoint(path, net, {"data": "/etc/passwd"})
    assert main(["eval", "--checkpoint", path]) == 2
    err = capsys.readouterr()
    assert "root:" not in err.out + err.err and err.err.startswith("convnet eval: error: unknown data")


# ------------------------------------------------------------------------------------------------
# 3. divergence: stop at the first non-finite loss, keep the last good checkpoint


def test_divergence_stops_naming_step_layer_and_checkpoint(tmp_path):
    out = str(tmp_path / "run")
    code = TRAINER + f"""
from convnet.train import NonFiniteLossError
run({out!r}, 1)
before = open(os.path.join({out!r}, "checkpoint.npz"), "rb").read()
try:
    run({out!r}, 3, resume={out!r}, lr=1e30)
    print("NO ERROR")
except NonFiniteLossError as e:
    print("STOPPED", e)
assert open(os.path.join({out!r}, "checkpoint.npz"), "rb").read() == before
print("KEPT")
"""
    text = run_isolated(code)
    assert "STOPPED" in text and "KEPT" in text, text
    line = text.split("STOPPED", 1)[1]
    assert "at step" in line and "first layer whose output is not finite: fc" in line
    assert os.path.join(out, "checkpoint.npz") in line
    assert epochs_in_log(out) == [1]


def test_divergence_read_every_few_steps_names_the_window(tmp_path, small_builtin, monkeypatch):
    # On a GPU the loss is read every CHECK_EVERY_CUDA steps: the error names the window it lies in.
    from convnet import epoch
    from convnet.train import NonFiniteLossError
    monkeypatch.setattr(epoch, "loss_check_every", lambda device: 2)
    with pytest.raises(NonFiniteLossError, match=r"the loss is (nan|inf) at one of steps 0\.\.1 \(epoch 1, batch 2"):
        convnet.train(data="builtin", epochs=1, batch_size=8, lr=1e30, out_dir=False, progress=False, workers=0)


@pytest.mark.parametrize("hp", [dict(lr=float("nan")), dict(lr=-1.0), dict(lr=0.0), dict(momentum=5.0),
                                dict(momentum=-0.5), dict(weight_decay=-1e-4), dict(weight_decay=float("inf")),
                                dict(lighting=-1.0), dict(epochs=0), dict(batch_size=0)])
def test_train_refuses_bad_hyper_parameters_before_any_work(tmp_path, small_builtin, hp):
    with pytest.raises(ValueError, match=next(iter(hp))):
        convnet.train(data="builtin", out_dir=str(tmp_path / "run"), progress=False, **hp)
    assert not os.path.exists(tmp_path / "run")


def test_predict_reads_images_like_the_folders(tmp_path, capsys):
    net = convnet.Net(GOOD_LAYERS, device="cpu")
    net.mean = np.zeros(3, np.float32)
    ckpt = str(tmp_path / "c.npz")
    convnet.save_checkpoint(ckpt, net, {"class_names": [str(c) for c in range(10)]})
    wide, junk = str(tmp_path / "wide.png"), str(tmp_path / "junk.png")
    Image.new("RGB", (20000, 1), (200, 10, 10)).save(wide)   # a bomb for "shorter side to 32" before
    with open(junk, "wb") as f:
        f.write(b"not a PNG")
    assert main(["predict", "--checkpoint", ckpt, "--top", "2", wide]) == 0
    assert capsys.readouterr().out.startswith(f"{wide}: ")
    assert main(["predict", "--checkpoint", ckpt, junk]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"convnet predict: error: image {junk}: cannot be read"), err
