"""The options of `python -m evaluation`: a typed dataclass parsed the project's one way (`cxr_vqa.cli`: YAML gives
defaults, flags override, unknown keys and bad values exit 2 with one line)."""

from __future__ import annotations

from dataclasses import dataclass, field

from cxr_vqa.cli import REPEATABLE
from cxr_vqa.errors import UserError
from cxr_vqa.findings import FINDINGS_KIND
from cxr_vqa.generation import GenerationSettings
from cxr_vqa.lineup import NO_BASE
from cxr_vqa.llama_server import GGUF_FORM, gguf_specs
from cxr_vqa.model import DEFAULT_BASE, adapter_specs
from cxr_vqa.remote import SPEC_FORM, remote_specs
from cxr_vqa.vqa import BASE
from evaluation import stats as S
from evaluation.benchmarks import BENCHMARKS
from evaluation.chexbert import LABELERS
from evaluation.findings import N_RESAMPLES as N_FINDINGS_RESAMPLES


@dataclass
class EvalConfig:
    dataset: str = field(
        default="", metadata={"help": "dataset of `python -m dataprep`, or a benchmark's release folder (required)"}
    )
    out: str = field(
        default="", metadata={"help": "report directory, created; an unfinished run there resumes (required)"}
    )
    split: str = field(default="test", metadata={"help": "split to evaluate: test (held-out patients) or validation"})
    base: str = field(
        default=DEFAULT_BASE,
        metadata={
            "help": "base checkpoint: Hub id (ID@REVISION pins a branch, tag or commit) or directory; none: "
            "remote models only. A resume into --out needs the same weights (content, not path)"
        },
    )
    adapter: list[str] | None = field(
        default=None,
        metadata={"help": "LoRA adapter: a directory or Hub id (ID@REVISION to pin one), or NAME=PATH; again for "
                  "several; omit for the base only", **REPEATABLE},
    )  # fmt: skip
    remote: list[str] | None = field(
        default=None,
        metadata={"help": f"a model behind an OpenAI-compatible vision endpoint (vLLM, OpenAI): {SPEC_FORM}; again "
                  "for several; its key from the variable named after the second # ($OPENAI_API_KEY by default for "
                  "api.openai.com only)", **REPEATABLE},
    )  # fmt: skip
    gguf: list[str] | None = field(
        default=None,
        metadata={"help": f"an export of python -m finetune.export_gguf, served by llama.cpp on a loopback port "
                  f"started for this run: {GGUF_FORM}; again for several", **REPEATABLE},
    )  # fmt: skip
    concurrency: int = field(default=8, metadata={"help": "remote requests in flight at once"})
    max_cost: float | None = field(
        default=None,
        metadata={"help": "stop sending remote requests past this (USD), counting what earlier runs into the same "
                  "--out spent (their answers are cached there): one cap over reruns"},
    )  # fmt: skip
    price_input: float | None = field(
        default=None, metadata={"help": "USD per million input tokens of the remote models (default: list prices)"}
    )
    price_output: float | None = field(default=None, metadata={"help": "USD per million output tokens, likewise"})
    remote_timeout: float = field(default=120.0, metadata={"help": "seconds a remote model may take to reply"})
    benchmark: str | None = field(
        default=None, metadata={"help": "a public benchmark instead of a dataprep dataset", "choices": BENCHMARKS}
    )
    all_organs: bool = field(default=False, metadata={"help": "benchmarks: every organ, not only chest X-ray"})
    all_languages: bool = field(default=False, metadata={"help": "SLAKE: every language, not only English"})
    limit: int | None = field(default=None, metadata={"help": "evaluate only the first N studies (films)"})
    batch_size: int = field(default=8, metadata={"help": "rows per generate call (each question gives one row per "
                                                         "model and image condition)"})  # fmt: skip
    max_new_tokens: int = field(default=64, metadata={"help": "answer length cap in tokens"})
    findings_max_new_tokens: int = field(
        default=160, metadata={"help": "length cap in tokens of a findings report (kind findings), decoded in batches "
                               "of their own so the short answers never wait on it"},
    )  # fmt: skip
    labeler: str = field(
        default="rules", metadata={"help": "who labels the findings reports for their F1s: rules (cxr_vqa.labeler, "
                                   "pure Python) or chexbert (an installed RadEval or f1chexbert with CheXbert's "
                                   "weights already on disk: the papers' F1-CheXbert)", "choices": LABELERS},
    )  # fmt: skip
    findings_resamples: int = field(
        default=N_FINDINGS_RESAMPLES, metadata={"help": "bootstrap resamples of the findings F1s (500: LLaVA-Rad's)"}
    )
    load_in_4bit: bool = field(
        default=True, metadata={"help": "4-bit nf4 base; --no-4bit for full precision (CPU, tiny)"}
    )
    device: str | None = field(
        default=None, metadata={"help": "cpu, cuda, cuda:1, mps (Apple silicon, 16-bit) (default: cuda if present)"}
    )
    ablation: bool = field(default=True, metadata={"help": "also ask every question with a blank image"})
    resamples: int = field(default=S.N_RESAMPLES, metadata={"help": "bootstrap resamples (over studies)"})
    seed: int = field(default=0, metadata={"help": "bootstrap seed"})
    maps: int = field(
        default=0, metadata={"help": "also draw maps.png: where each model looked (relevance maps) for N sampled "
                             "questions, right and wrong answers; 0 (default) draws none: each costs a backward pass"},
    )  # fmt: skip
    extra_metrics: str | None = field(
        default=None,
        metadata={"help": "model-based metrics on open answers (needs the RadEval package and its weights)",
                  "choices": ["radeval"]},
    )  # fmt: skip

    def __post_init__(self):
        if not self.dataset or not self.out:
            raise UserError("--dataset and --out are required")
        if self.batch_size < 1 or (self.limit is not None and self.limit < 1) or self.maps < 0:
            raise UserError("--batch-size and --limit must be positive, --maps 0 or more")
        if min(self.resamples, self.findings_resamples) < 100:
            raise UserError(f"--resamples and --findings-resamples must be >= 100 for a stable 95% interval, got "
                            f"{self.resamples} and {self.findings_resamples}")  # fmt: skip
        GenerationSettings(max_new_tokens=self.max_new_tokens)  # same range checks as the app
        GenerationSettings(max_new_tokens=self.findings_max_new_tokens)
        adapters = adapter_specs(self.adapter)  # names checked before any model is loaded
        self.remotes = remote_specs(self.remote, taken=[BASE, *adapters])
        self.ggufs = gguf_specs(self.gguf, taken=[BASE, *adapters, *self.remotes])  # folders checked now
        if self.base == NO_BASE and (adapters or not (self.remotes or self.ggufs)):
            raise UserError("--base none evaluates remote models only: give --remote or --gguf, and no --adapter")
        if self.base == NO_BASE and self.maps:
            raise UserError("--maps draws where local models looked: it needs a --base, and --base none has none")
        if self.concurrency < 1 or self.remote_timeout <= 0 or (self.max_cost is not None and self.max_cost < 0):
            raise UserError("--concurrency and --remote-timeout must be positive, --max-cost not negative")
        if (self.price_input is None) != (self.price_output is None):
            raise UserError("give both --price-input and --price-output, or neither (list prices)")
        self.local_models = [BASE, *adapters] if self.base != NO_BASE else []
        # local first, then remote (GGUF exports last), as the app shows them
        self.models = self.local_models + list(self.remotes) + list(self.ggufs)

    @property
    def generation(self) -> dict[str, GenerationSettings]:
        """Greedy decoding settings by question kind: findings reports get their own length cap."""
        short = GenerationSettings(max_new_tokens=self.max_new_tokens)
        return {"closed": short, "open": short, FINDINGS_KIND: GenerationSettings(self.findings_max_new_tokens)}

    @property
    def price(self) -> tuple[float, float] | None:
        return None if self.price_input is None else (self.price_input, self.price_output)
