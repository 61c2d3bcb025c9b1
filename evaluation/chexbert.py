"""Who labels the findings reports: the project's rule-based labeler (default), or CheXbert, the labeler behind the
papers' F1-CheXbert, through an installed RadEval or f1chexbert package whose weights are already on disk.

    labeler = make_labeler("rules")        # [text, ...] -> [{observation: 1 | 0 | -1}, ...]
    labeler = make_labeler("chexbert")     # UserError, one line, when the package or its weights are missing

CheXbert is never a dependency of this project and never downloaded by it: its weights live on the Hugging Face Hub
(StanfordAIMI/RRG_scorers), so the Hub is switched to offline mode while the scorer is built; a user who wants the
papers' scale installs RadEval and fetches the weights once, outside this command. Its "classification" reading gives
1 (positive), -1 (uncertain) or 0 (negative or not mentioned: CheXbert's heads tell them apart, its scorers do not),
which is all the F1s need.
"""

from __future__ import annotations

import contextlib
import importlib
import os

from cxr_vqa.errors import UserError
from cxr_vqa.labeler import OBSERVATIONS
from evaluation.findings import Labeler, rule_labeler

LABELERS = ("rules", "chexbert")
# where each package has kept its CheXbert scorer over its versions
SCORERS = (("RadEval.metrics.f1chexbert.f1chexbert", "F1CheXbert"), ("RadEval.factual.f1chexbert", "F1CheXbert"),
           ("f1chexbert", "F1CheXbert"))  # fmt: skip
MISSING = ("--labeler chexbert needs the RadEval (or f1chexbert) package and CheXbert's weights already on disk: "
           "`pip install RadEval` and fetch StanfordAIMI/RRG_scorers once; or use --labeler rules")  # fmt: skip


def make_labeler(name: str) -> Labeler:
    """The labeler called `name` (one of LABELERS); UserError in one line when it cannot run here."""
    if name == "rules":
        return rule_labeler
    if name != "chexbert":
        raise UserError(f"--labeler must be one of {', '.join(LABELERS)}, got {name!r}")
    return _chexbert()


def _scorer_class():
    for module, attribute in SCORERS:
        try:
            return getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError):
            continue
    return None


@contextlib.contextmanager
def _offline():
    """The Hub offline while CheXbert is built: weights already on disk load, nothing is fetched."""
    saved = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = None
    with contextlib.suppress(ImportError):
        from huggingface_hub import constants  # read at import: flip the flag it keeps too
    before = getattr(constants, "HF_HUB_OFFLINE", None)
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if constants is not None:
            constants.HF_HUB_OFFLINE = before
        if saved is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved


def _chexbert() -> Labeler:
    scorer_class = _scorer_class()
    if scorer_class is None:
        raise UserError(MISSING)
    import torch

    try:
        with _offline():
            scorer = scorer_class(device="cuda" if torch.cuda.is_available() else "cpu")
    except Exception as err:  # noqa: BLE001 - missing weights, no cache, a version mismatch: one line for the user
        raise UserError(f"{MISSING} ({type(err).__name__} while loading it; nothing was downloaded)") from None
    names = list(getattr(scorer, "TARGET_NAMES", None) or getattr(scorer, "target_names", None) or OBSERVATIONS)

    def label(texts: list[str]) -> list[dict]:
        texts = [text or "" for text in texts]
        if hasattr(scorer, "get_labels"):
            rows = scorer.get_labels(texts, mode="classification")
        else:
            rows = [scorer.get_label(text, mode="classification") for text in texts]
        return [{name: int(v) for name, v in zip(names, row, strict=True) if int(v) in (1, -1)} for row in rows]

    return label
