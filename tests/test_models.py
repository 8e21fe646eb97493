"""Models: AlexNet 2012 (two towers), OWT, the small default net: shapes, parameter counts, errors."""
import numpy as np
import pytest

import convnet
from convnet import models
from convnet.net import Net


@pytest.fixture(scope="module")
def alexnet2012():
    return convnet.alexnet("2012")


def test_alexnet_2012_parameters_and_shapes(alexnet2012):
    net = alexnet2012
    # conv1 2x17,472 + conv2 2x153,728 + conv3 2x442,560 + conv4 2x331,968 + conv5 2x221,312
    # + fc6 2x18,876,416 + fc7 2x8,390,656 + fc8 4,097,000: the paper's "60 million".
    assert net.num_params == 60_965_224
    shapes = {l.name: l.out_shape for l in net.layers}
    assert shapes["conv1a"] == (55, 55, 48) and shapes["conv1b"] == (55, 55, 48)
    assert shapes["pool1a"] == (27, 27, 48) and shapes["conv2a"] == (27, 27, 128)
    assert shapes["pool2b"] == (13, 13, 128) and shapes["conv3a"] == (13, 13, 192)
    assert shapes["conv5b"] == (13, 13, 128) and shapes["pool5a"] == (6, 6, 128)
    assert shapes["fc6a"] == (2048,) and shapes["fc7b"] == (2048,) and shapes["fc8"] == (1000,)
    assert net.layer("conv3a").source_inputs == ["pool2a", "pool2b"]  # conv3 reads both towers
    assert net.layer("conv3a").inputs == ["pool2a", "pool2b@cpu/0"]   # ... tower b's through a copy
    assert net.layer("conv4a").inputs == ["conv3a"]                    # conv4/5 their own
    # the fc layers are split too, each half reading both towers (the paper's figure 2)
    assert net.layer("fc6a").source_inputs == ["pool5a", "pool5b"]
    assert net.layer("fc6b").weights[1].shape == (2048, 6 * 6 * 128)
    assert net.layer("fc7a").source_inputs == ["drop6a", "drop6b"]
    assert net.layer("fc8").source_inputs == ["drop7a", "drop7b"]
    # the paper's initialisation: biases 1 in conv2, conv4, conv5, fc6, fc7
    ones = {l.name for l in net.layers if getattr(l, "bias_param", None) is not None
            and l.bias_param.value.numpy()[0] == 1.0}
    assert ones == {"conv2a", "conv2b", "conv4a", "conv4b", "conv5a", "conv5b", "fc6a", "fc6b", "fc7a", "fc7b"}
    text = net.summary(print_it=False)
    assert "60,965,224" in text and "60.97 M parameters" in text
    for s in ("(N, 55, 55, 48)", "(N, 27, 27, 128)", "(N, 13, 13, 192)", "(N, 6, 6, 128)"):
        assert s in text


def test_alexnet_owt():
    net = convnet.alexnet("owt", allocate=False)
    assert net.num_params == 61_100_840  # torchvision's alexnet
    assert net.input_shape == (224, 224, 3)
    shapes = {l.name: l.out_shape for l in net.layers}
    assert shapes["conv1"] == (55, 55, 64) and shapes["pool5"] == (6, 6, 256)
    assert not any(l.type == "lrn" for l in net.layers)


def test_num_classes_and_input_size():
    net = Net(models.alexnet_2012_config(num_classes=10, input_size=227), allocate=False)
    assert net.num_classes == 10 and net.layer("fc8").weights[0].shape == (10, 2048)
    small = models.small(num_classes=7, input_size=32)
    assert small.num_classes == 7 and small.input_shape == (32, 32, 3)
    assert small.layer("pool2").out_shape == (7, 7, 64)
    with pytest.raises(ValueError, match="pool"):
        Net(models.alexnet_2012_config(input_size=64), allocate=False)  # too small for the 2012 stack


def test_small_default_net_family():
    net = models.get_model("default", num_classes=10)
    kinds = [l.type for l in net.layers]
    for k in ("conv", "lrn", "maxpool", "dropout", "fc", "softmax"):
        assert k in kinds
    assert net.input_shape == (28, 28, 3)
    assert net.layer("pool1").size == (3, 3) and net.layer("pool1").stride == (2, 2)  # overlapping


def test_unknown_model_lists_known():
    with pytest.raises(ValueError, match=r"unknown model 'resnet'.*'default'.*'2012'.*'owt'"):
        models.get_model("resnet")
    with pytest.raises(ValueError, match="known: '2012', 'owt'"):
        convnet.alexnet("2015")


def test_two_tower_placement_inserts_copies():
    """Two towers on one device still get copies exactly where a layer reads the other tower
    (tests/test_parallel.py checks what they move)."""
    cfg = models.alexnet_2012_config(num_classes=10, input_size=227)
    net = Net(cfg, allocate=False)
    assert sorted(c.name for c in net.copies) == [
        "data@cpu/1", "drop6a@cpu/1", "drop6b@cpu/0", "drop7b@cpu/0",
        "pool2a@cpu/1", "pool2b@cpu/0", "pool5a@cpu/1", "pool5b@cpu/0"]
    one = Net(cfg, allocate=False, devices=["cpu"] * 2)
    assert one.num_params == net.num_params and len(one.copies) == 8


def test_summary_cli(capsys):
    from convnet.__main__ import main
    assert main(["summary", "--model", "2012"]) == 0
    out = capsys.readouterr().out
    assert "60,965,224" in out and "conv3a" in out
    assert main(["summary", "--model", "nope"]) == 2
    assert main(["info"]) == 0
    assert "devices: cpu" in capsys.readouterr().out


def test_alexnet_2012_trains_one_step(alexnet2012):
    """A whole step of the paper's net at 227x227 (batch 2): finite loss near ln(1000), every
    parameter gets a gradient, the update changes fc8."""
    net = alexnet2012
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((2, 227, 227, 3)) * 50).astype(np.float32)  # raw mean-subtracted pixels
    y = np.array([3, 999], np.int32)
    before = net.layer("fc8").weights[0].value.numpy()
    stats = net.train_step(x, y, lr=0.01, step=0, seed=1).numpy()
    assert np.isfinite(stats).all() and 5.0 < stats[0] < 9.0
    for name, p in net.named_params():
        assert np.isfinite(p.grad.numpy()).all(), name
    assert not np.array_equal(before, net.layer("fc8").weights[0].value.numpy())
