"""Where a model or adapter comes from, checked once: a local folder (readable, with its config file) or a Hub id that
can be loaded, with its config read once and passed down to every loader (`cxr_vqa.model`), to training and merge.

    base = resolve("llava-hf/llava-1.5-7b-hf")        # Source(name, "model", LlavaConfig); one line if it cannot be
    adapter = resolve("runs/llava-cxr", ADAPTER)       # Source(name, "adapter", adapter_config.json as a dict)
    base = resolve("llava-hf/llava-1.5-7b-hf@a272c74") # a Hub id at a branch, tag or commit: Source.revision
    split_revision("runs/lr@1e-4")                     # ("runs/lr@1e-4", None) where that folder exists

`ID@REVISION` pins a Hub model to a branch, tag or commit; every loader passes it on as `revision=`. A path that
exists is taken whole, "@" and all: a local folder wins over the Hub reading of its name.
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

    name: str  # the path or Hub id, without its revision
    kind: str  # MODEL or ADAPTER
    config: Any
    revision: str | None = None  # a Hub id's branch, tag or commit; None: its default branch

    @property
    def local(self) -> bool:
        return Path(self.name).exists()

    @property
    def spec(self) -> str:
        """The name as the user gives it: `ID@REVISION` where pinned."""
        return f"{self.name}@{self.revision}" if self.revision else self.name

    @property
    def hub_kwargs(self) -> dict:
        """What every `from_pretrained` of this source takes besides its name."""
        return {"revision": self.revision} if self.revision else {}


def split_revision(spec: str | os.PathLike) -> tuple[str, str | None]:
    """(path or Hub id, revision or None) of a `--base`/`--adapter` value; `ID@REVISION` names a branch, tag or
    commit of a Hub id. A path that exists is taken whole, "@" and all (a folder named "runs/lr@1e-4")."""
    spec = os.fspath(spec)
    if "@" not in spec or Path(spec).exists():
        return spec, None
    name, _, revision = spec.partition("@")  # a Hub id has no "@"; a git branch name may
    if not name or not revision:
        raise ModelLoadError(f"{spec!r}: no such path, and not ID@REVISION (a Hub id, then a branch, tag or commit)")
    if Path(name).exists():
        raise ModelLoadError(f"{spec!r}: {name} is a local folder, and @{revision} pins only a Hub id to a revision")
    return name, revision


def resolve(name: str | Source, kind: str = MODEL) -> Source:
    """Check `name` as a `kind` and read its config; a Source is returned as it is. Fails in one line (ModelLoadError)
    on a path that cannot hold one, an unreadable folder, or a Hub that cannot be reached."""
    if isinstance(name, Source):
        return name
    spec = name
    name, revision = split_revision(spec)
    config_file, path = _CONFIG_FILE[kind], Path(name)
    if path.exists():
        if path.is_dir() and (denied := unreadable(path)):  # transformers would say "No such file or directory"
            raise ModelLoadError(unreadable_message(denied[0]))
        if not (path / config_file).is_file():
            raise ModelLoadError(f"{name} has no {config_file}: {_NO_CONFIG_HINT[kind]}")
    elif name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ModelLoadError(f"{kind} {spec!r} not found: no such directory, and it is not a Hub id (owner/name)")
    elif problem := hub_problem(name, config_file, revision):
        raise ModelLoadError(problem)
    config = _read_config(name, revision) if kind == MODEL else _read_adapter_config(name, revision)
    return Source(name, kind, config, revision)


def offline_hint() -> str:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return " (HF_HUB_OFFLINE=1 is set: download it once online, or pass a local directory)"
    return " (check the name, your network, and `huggingface-cli login` for gated models)"


def at_revision(name: str, revision: str | None) -> str:
    """`name`, with the revision it was asked at, for messages."""
    return f"{name!r} at revision {revision!r}" if revision else repr(name)


def _read_config(name: str, revision: str | None = None):
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name, revision=revision)
    except (OSError, ValueError) as err:  # an unknown revision too: "... is not a valid git identifier ..."
        raise ModelLoadError(
            f"cannot read the config of {at_revision(name, revision)}{offline_hint()}: {str(err).splitlines()[0]}"
        ) from None
    if config.model_type != "llava":
        raise ModelLoadError(f"{name!r} is a {config.model_type!r} model, not LLaVA: pass a LLaVA-1.5 checkpoint")
    return config


def _read_adapter_config(adapter: str, revision: str | None = None) -> dict:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    file = Path(adapter) / _CONFIG_FILE[ADAPTER]
    try:
        if not file.is_file():  # a Hub id: the cached copy, or one small download
            file = Path(hf_hub_download(adapter, _CONFIG_FILE[ADAPTER], revision=revision))
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError, EntryNotFoundError) as err:  # the Hub's errors are OSErrors, but this one
        if Path(adapter).exists():
            raise ModelLoadError(f"cannot read {file}: {str(err).splitlines()[0][:200]}") from None
        raise ModelLoadError(
            f"adapter {at_revision(adapter, revision)} not found: no such directory, and no adapter of that name "
            f"{'and revision ' if revision else ''}on the Hub{offline_hint()}"
        ) from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{file} is not an adapter config (a JSON object)")
    return config
