"""Where a model or adapter comes from, checked once: a local folder (readable, with its config file) or a Hub id that
can be loaded, with its config read once and passed down to every loader (`cxr_vqa.model`), to training and merge.

    base = resolve("llava-hf/llava-1.5-7b-hf")        # Source(name, "model", LlavaConfig); one line if it cannot be
    adapter = resolve("runs/llava-cxr", ADAPTER)       # Source(name, "adapter", adapter_config.json as a dict)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr_vqa.errors import UserError
from cxr_vqa.files import unreadable, unreadable_message
from cxr_vqa.hub import hub_problem


class ModelLoadError(UserError):
    """A model, processor or adapter that cannot be used; the message names the problem and the fix."""


MODEL, ADAPTER = "model", "adapter"
_CONFIG_FILE = {MODEL: "config.json", ADAPTER: "adapter_config.json"}
_NO_CONFIG_HINT = {
    MODEL: "point --base at a LLaVA-1.5 checkpoint directory (e.g. one written by `python -m finetune.tiny_model`) or "
    "a Hub id",
    ADAPTER: "pass the directory that `python -m finetune` wrote",
}


@dataclass(frozen=True)
class Source:
    """A model or adapter location checked once (a readable local folder with its config file, or a Hub id that can
    be loaded) with its config read once: a model's `LlavaConfig`, an adapter's adapter_config.json as a dict.
    Every loader below takes a name or a Source, and checks a name only."""

    name: str
    kind: str  # MODEL or ADAPTER
    config: Any

    @property
    def local(self) -> bool:
        return Path(self.name).exists()


def resolve(name: str | Source, kind: str = MODEL) -> Source:
    """Check `name` as a `kind` and read its config; a Source is returned as it is. Fails in one line (ModelLoadError)
    on a path that cannot hold one, an unreadable folder, or a Hub that cannot be reached."""
    if isinstance(name, Source):
        return name
    config_file, path = _CONFIG_FILE[kind], Path(name)
    if path.exists():
        if path.is_dir() and (denied := unreadable(path)):  # transformers would say "No such file or directory"
            raise ModelLoadError(unreadable_message(denied[0]))
        if not (path / config_file).is_file():
            raise ModelLoadError(f"{name} has no {config_file}: {_NO_CONFIG_HINT[kind]}")
    elif name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ModelLoadError(f"{kind} {name!r} not found: no such directory, and it is not a Hub id (owner/name)")
    elif problem := hub_problem(name, config_file):
        raise ModelLoadError(problem)
    return Source(name, kind, _read_config(name) if kind == MODEL else _read_adapter_config(name))


def offline_hint() -> str:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return " (HF_HUB_OFFLINE=1 is set: download it once online, or pass a local directory)"
    return " (check the name, your network, and `huggingface-cli login` for gated models)"


def _read_config(name: str):
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"cannot read the config of {name!r}{offline_hint()}: {str(err).splitlines()[0]}"
        ) from None
    if config.model_type != "llava":
        raise ModelLoadError(f"{name!r} is a {config.model_type!r} model, not LLaVA: pass a LLaVA-1.5 checkpoint")
    return config


def _read_adapter_config(adapter: str) -> dict:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    file = Path(adapter) / _CONFIG_FILE[ADAPTER]
    try:
        if not file.is_file():  # a Hub id: the cached copy, or one small download
            file = Path(hf_hub_download(adapter, _CONFIG_FILE[ADAPTER]))
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError, EntryNotFoundError) as err:  # the Hub's errors are OSErrors, but this one
        if Path(adapter).exists():
            raise ModelLoadError(f"cannot read {file}: {str(err).splitlines()[0][:200]}") from None
        raise ModelLoadError(
            f"adapter {adapter!r} not found: no such directory, and no adapter of that name on the Hub"
            + offline_hint()
        ) from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{file} is not an adapter config (a JSON object)")
    return config
