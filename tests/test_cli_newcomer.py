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
