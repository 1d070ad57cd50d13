"""Reading weight files safely, matching them to an architecture, and finding cached weights offline."""

from __future__ import annotations

import collections

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from tlkit import weights
from tlkit.errors import TlkitError

RESNET18_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
# Empty temporary caches, offline, no network (the fixture lives in conftest.py).
pytestmark = pytest.mark.usefixtures("offline_caches")


def _small_net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))


def test_safetensors_and_pth_read_back_the_same_tensors(tmp_path):
    state = {"a": torch.arange(3.0), "b": torch.ones(2, 2)}
    save_file(state, tmp_path / "w.safetensors")
    torch.save(state, tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        read = weights.read_tensors(tmp_path / name)
        assert read.keys() == state.keys() and torch.equal(read["a"], state["a"])


def test_wrapped_state_dicts_and_prefixes_are_unwrapped(tmp_path):
    torch.save({"epoch": 3, "state_dict": {"module.w": torch.ones(1)}}, tmp_path / "ddp.pth")
    save_file({"model.w": torch.ones(1), "model.b": torch.zeros(1)}, tmp_path / "tlkit.safetensors")
    assert list(weights.read_tensors(tmp_path / "ddp.pth")) == ["w"]
    assert sorted(weights.read_tensors(tmp_path / "tlkit.safetensors")) == ["b", "w"]


class Payload:
    """Stands for any pickled object; weights_only loading must never build it."""


def test_a_pth_carrying_a_pickled_object_is_refused(tmp_path):
    torch.save({"w": torch.ones(1), "extra": Payload(), "counts": collections.Counter(a=1)}, tmp_path / "evil.pth")
    with pytest.raises(TlkitError, match=r"refused .*evil\.pth.*pickled Python objects.*Payload"):
        weights.read_tensors(tmp_path / "evil.pth")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_truncated_file_is_named_with_what_to_delete(tmp_path, suffix):
    whole = tmp_path / f"whole{suffix}"
    state = {"w": torch.randn(64, 64)}
    save_file(state, whole) if suffix == ".safetensors" else torch.save(state, whole)
    half = tmp_path / f"half{suffix}"
    half.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(TlkitError, match=rf"half\{suffix} is truncated or corrupt.*delete {tmp_path}"):
        weights.read_tensors(half, delete_hint=tmp_path)


def test_missing_files_wrong_suffixes_and_empty_dicts_are_user_errors(tmp_path):
    with pytest.raises(TlkitError, match="does not exist"):
        weights.read_tensors(tmp_path / "nope.pth")
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(TlkitError, match="expected a .safetensors"):
        weights.read_tensors(tmp_path / "w.npz")
    torch.save({"epoch": 3}, tmp_path / "meta.pth")
    with pytest.raises(TlkitError, match="holds no state dict"):
        weights.read_tensors(tmp_path / "meta.pth")


def test_load_matching_loads_trunk_and_keeps_a_differently_shaped_head_fresh():
    source, target = _small_net(), nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 5))
    fresh_head = target[2].weight.detach().clone()
    tensors = {k: v for k, v in source.state_dict().items() if k != "1.num_batches_tracked"}
    fresh = weights.load_matching(target, tensors, head_keys={"2.weight", "2.bias"}, source="test file")
    assert fresh == ["2.bias", "2.weight"]
    assert torch.equal(target[0].weight, source[0].weight)
    assert torch.equal(target[2].weight, fresh_head)


def test_load_matching_names_missing_unexpected_and_reshaped_keys():
    tensors = dict(_small_net().state_dict())
    tensors["extra.weight"] = tensors.pop("0.weight")
    tensors["1.weight"] = torch.ones(7)
    with pytest.raises(TlkitError) as caught:
        weights.load_matching(_small_net(), tensors, head_keys={"2.weight", "2.bias"}, source="w.pth")
    message = str(caught.value)
    assert "w.pth does not fit" in message
    assert "missing keys: 0.weight" in message and "unexpected keys: extra.weight" in message
    assert "1.weight (7,) in the file, (3,) here" in message


def test_torch_hub_location_follows_torch_home(tmp_path):
    location = weights.url_weights(RESNET18_URL)
    assert location.folder == tmp_path / "torch" / "hub" / "checkpoints"
    assert location.file_name == "resnet18-f37072fd.pth" and location.path is None
    location.folder.mkdir(parents=True)
    (location.folder / location.file_name).write_bytes(b"planted")
    assert weights.url_weights(RESNET18_URL).path == location.folder / "resnet18-f37072fd.pth"


def test_offline_and_not_cached_names_file_folder_and_alternatives(tmp_path):
    with pytest.raises(TlkitError) as caught:
        weights.fetch(weights.url_weights(RESNET18_URL), "resnet18")
    message = str(caught.value)
    for expected in ("HF_HUB_OFFLINE is set", "resnet18-f37072fd.pth", str(tmp_path / "torch" / "hub" / "checkpoints"),
                     "--weights PATH", "--weights none"):
        assert expected in message


def test_an_unreachable_host_fails_fast_without_a_download(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TLKIT_OFFLINE", raising=False)
    for variable in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    probed = []

    def refused(address, timeout):
        probed.append((address, timeout))
        raise ConnectionRefusedError("no route")

    monkeypatch.setattr(weights.socket, "create_connection", refused)
    with pytest.raises(TlkitError, match="download.pytorch.org cannot be reached.*resnet18-f37072fd.pth"):
        weights.fetch(weights.url_weights(RESNET18_URL), "resnet18")
    assert probed == [(("download.pytorch.org", 443), weights.PROBE_TIMEOUT_S)]


def test_hugging_face_cache_follows_hf_home_and_finds_a_planted_snapshot(tmp_path, monkeypatch):
    repo = tmp_path / "hf" / "hub" / "models--timm--tiny.test"
    assert weights.hf_weights("timm/tiny.test").path is None
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abc")
    (repo / "snapshots" / "0123abc").mkdir(parents=True)
    save_file({"w": torch.ones(1)}, repo / "snapshots" / "0123abc" / "model.safetensors")
    location = weights.hf_weights("timm/tiny.test")
    assert location.path == repo / "snapshots" / "0123abc" / "model.safetensors"
    assert location.folder == repo
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert weights.hf_cache_folder() == tmp_path / "elsewhere"


def test_a_file_of_garbage_says_what_is_wrong_not_torch_advice(tmp_path):
    garbage = tmp_path / "weights.pth"
    garbage.write_bytes(b"garbage bytes")
    with pytest.raises(TlkitError) as raised:
        weights.read_tensors(garbage)
    assert "not a PyTorch tensor file" in str(raised.value) and "PyTorch 2.6" not in str(raised.value)


class RunsCode:
    """A pickle that would call a function of a blocked module (os) when loaded."""

    def __reduce__(self):
        import os

        return (os.getcwd, ())


def test_a_pth_that_would_run_code_is_refused_as_pickled_not_called_corrupt(tmp_path):
    torch.save({"w": torch.ones(1), "payload": RunsCode()}, tmp_path / "code.pth")
    with pytest.raises(TlkitError, match=r"refused .*code\.pth.*pickled Python objects \((posix|nt)\.getcwd\)"):
        weights.read_tensors(tmp_path / "code.pth")


@pytest.mark.parametrize("content", ["code", "truncated"])
def test_a_bad_resume_file_is_one_message(tmp_path, content):
    from tlkit.checkpoint import RESUME, load_resume

    if content == "code":
        torch.save({"epoch": 1, "payload": RunsCode()}, tmp_path / RESUME)
    else:
        torch.save({"epoch": 1, "w": torch.ones(1000)}, tmp_path / RESUME)
        data = (tmp_path / RESUME).read_bytes()
        (tmp_path / RESUME).write_bytes(data[:len(data) // 2])
    with pytest.raises(TlkitError, match="pickled Python objects" if content == "code" else "truncated") as caught:
        load_resume(tmp_path)
    assert "--resume" in str(caught.value)
