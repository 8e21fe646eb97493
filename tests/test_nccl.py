"""convnet.nccl: NCCL loaded at run time. Without a GPU: finding and loading the library, its version,
unique ids, the errors; with one (tools/device_check.sh runs tools/nccl_check.py): the collectives."""
import pytest

from convnet import nccl


def _need_nccl():
    if not nccl.available():
        pytest.skip("NCCL is not installed (pip install nvidia-nccl-cu13)")


def test_version_and_unique_ids_need_no_gpu():
    _need_nccl()
    major, minor, _ = nccl.version()
    assert (major, minor) >= (2, 9)
    a, b = nccl.unique_id(), nccl.unique_id()
    assert len(a) == len(b) == nccl.NCCL_UNIQUE_ID_BYTES and a != b


def test_missing_library_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(nccl, "_lib", None)
    monkeypatch.setenv("CONVNET_NCCL", str(tmp_path / "libnccl.so.2"))
    with pytest.raises(nccl.NcclError, match="cannot load"):
        nccl.library()
    assert not nccl.available()


def test_comm_argument_errors():
    _need_nccl()
    with pytest.raises(ValueError, match="unique id has 3 bytes"):
        nccl.NcclComm(b"abc", 2, 0)
    with pytest.raises(ValueError, match="rank 2 outside"):
        nccl.NcclComm(nccl.unique_id(), 2, 2)
