"""Options of `python -m dataprep`: one typed dataclass, parsed the project's one way (`cxr_vqa.cli`): a YAML file
gives defaults, flags override, unknown keys and bad values exit 2 with a one-line message.

    python -m dataprep --config my.yaml --limit 100       # my.yaml: {source: iu-xray, root: ..., generator: llm, ...}
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cxr_vqa.cli import parse_config as parse
from dataprep.llm.budget import MAX_SENDS_PER_REPORT, check_retry_options
from dataprep.releases import IU_LABELS, MIMIC_LABELS, SOURCES

GENERATORS = ("labels", "llm")


def _opt(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class Config:
    source: str = _opt("chexpert-plus", "the release ROOT holds, as shipped (docs/data.md)", choices=SOURCES)
    root: str = _opt(
        "",
        "the release: chexpert-plus: the unpacked CSV, PNG/, chexbert_labels/; mimic-cxr: MIMIC-CXR-JPG 2.x (files/, "
        "mimic-cxr-2.0.0-*.csv.gz) with mimic-cxr-reports.zip; iu-xray: NLMCXR_reports.tgz and NLMCXR_png.tgz",
    )
    chexpert_root: str = _opt("", "deprecated, goes in the next release: --root with --source chexpert-plus")
    mimic_labels: str = _opt(
        "chexpert", "mimic-cxr: labels from mimic-cxr-2.0.0-chexpert.csv.gz or -negbio.csv.gz", choices=MIMIC_LABELS
    )
    mimic_reports: str | None = _opt(
        None, "mimic-cxr: mimic-cxr-reports.zip, or the folder holding it or its extracted files/ (default: ROOT)"
    )
    iu_labels: str = _opt(
        "labeler",
        "iu-xray: labels from the project's labeler over findings and impression (MeSH terms where it finds "
        "nothing), or from the MeSH major terms only",
        choices=IU_LABELS,
    )
    i_have_permission_for_remote: bool = _opt(
        False,
        "llm on mimic-cxr: allow an endpoint on another machine. PhysioNet's credentialed licence forbids sending "
        "MIMIC-CXR text to online services such as ChatGPT: give this only if your agreement covers that endpoint",
    )
    out: str = _opt("", "folder for the dataset (save_to_disk), stats.json, rejects.jsonl and the cache")
    generator: str = _opt(
        "labels", "labels: offline QA from the release's labels; llm: QA written by an LLM", choices=GENERATORS
    )
    limit: int | None = _opt(
        None, "only the first N studies (in CheXpert Plus's CSV, MIMIC-CXR's metadata; IU X-ray: by report number)"
    )
    seed: int = _opt(0, "seed of the patient split and of the labels generator's phrasing")
    image_size: int = _opt(336, "side of the letterboxed square images (LLaVA-1.5 sees 336 px)")
    split_fractions: str = _opt(
        "0.8,0.1,0.1",
        "train,validation,test fractions of the patients without an official split (MIMIC-CXR's is kept as it is)",
    )
    qa_per_study: int = _opt(5, "QA pairs per study (one conversation per study)")
    no_findings: bool = _opt(
        False, "leave out the findings turn that opens each conversation (its cleaned findings section, kind findings)"
    )
    findings_share: float = _opt(
        1.0, "share of the studies whose conversation opens with the findings turn, drawn per study from the seed "
        "(the rest train every question with the film alone, as the evaluation asks it; docs/findings.md)",
    )
    workers: int = _opt(8, "threads that decode and letterbox images")
    model: str = _opt("gpt-4o-mini", "llm: model name at the endpoint")
    base_url: str | None = _opt(None, "llm: any OpenAI-compatible endpoint (vLLM, Ollama, Azure); default OpenAI")
    api_key_env: str | None = _opt(
        None,
        "llm: environment variable holding the API key (never a flag); default OPENAI_API_KEY for api.openai.com "
        "only, none for a server on this machine: any other https endpoint must name its own",
    )
    concurrency: int = _opt(8, "llm: requests in flight")
    max_retries: int = _opt(
        4,
        f"llm: retries of one request after 429, 5xx, timeouts or connection errors (nothing billed); at most "
        f"{MAX_SENDS_PER_REPORT - 1}, larger values are rejected: no report is sent over {MAX_SENDS_PER_REPORT} times",
    )
    max_invalid_retries: int = _opt(
        2,
        f"llm: retries of one request whose reply was malformed or failed the schema (billed; at temperature 0 it "
        f"often comes back the same); at most {MAX_SENDS_PER_REPORT - 1}, larger values are rejected; with "
        f"--max-retries, the sends of one report stop at {MAX_SENDS_PER_REPORT}",
    )
    timeout: float = _opt(120.0, "llm: seconds before one request times out")
    max_cost: float | None = _opt(None, "llm: stop sending once this many USD would be exceeded")
    price_input: float | None = _opt(None, "llm: USD per million input tokens (default: known list prices, else 0)")
    price_output: float | None = _opt(None, "llm: USD per million output tokens")
    dry_run: bool = _opt(False, "llm: estimate requests, tokens and cost; send nothing, write nothing")
    batch_api: bool = _opt(False, "llm: use the OpenAI Batch API (half price, results within 24 h)")
    poll_interval: float = _opt(30.0, "llm --batch-api: seconds between polls")
    cache_dir: str | None = _opt(None, "llm: reply cache (default OUT/cache); reruns are free from it")
    retry_rejected: bool = _opt(
        False,
        "llm: send again the reports whose replies stayed malformed after their billed retries; without it a rerun "
        "rejects them from the cache without a request (429, 5xx, timeouts and --max-cost are always retried)",
    )
    push_to_hub: str | None = _opt(None, "also push the DatasetDict to this Hub repo, private (HF_TOKEN from env)")
    progress: bool = _opt(True, "show progress bars")

    def __post_init__(self) -> None:
        if self.chexpert_root:
            if self.source != "chexpert-plus":
                raise ValueError(f"--chexpert-root is CheXpert Plus's: with --source {self.source} use --root")
            if self.root and self.root != self.chexpert_root:
                raise ValueError("give --root or the deprecated --chexpert-root, not both")
            self.root = self.chexpert_root
        if not self.root or not self.out:
            raise ValueError("--root and --out are required")
        if self.source not in SOURCES:
            raise ValueError(f"--source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        for option, value, default, source in (("mimic_labels", self.mimic_labels, "chexpert", "mimic-cxr"),
                                               ("mimic_reports", self.mimic_reports, None, "mimic-cxr"),
                                               ("iu_labels", self.iu_labels, "labeler", "iu-xray")):  # fmt: skip
            if value != default and self.source != source:
                raise ValueError(f"--{option.replace('_', '-')} is for --source {source}, not {self.source}")
        if self.mimic_labels not in MIMIC_LABELS or self.iu_labels not in IU_LABELS:
            choices = f"--mimic-labels is one of {', '.join(MIMIC_LABELS)}; --iu-labels of {', '.join(IU_LABELS)}"
            raise ValueError(choices)
        if self.generator not in GENERATORS:
            raise ValueError(f"--generator must be one of {', '.join(GENERATORS)}, got {self.generator!r}")
        fractions = self.fractions
        if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
            raise ValueError(f"--split-fractions must be three numbers >= 0 that sum to 1, got {self.split_fractions}")
        positive = {"image_size": self.image_size, "concurrency": self.concurrency, "workers": self.workers}
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.qa_per_study < 1 or (self.limit is not None and self.limit < 0):
            raise ValueError("--qa-per-study must be >= 1, --limit >= 0")
        if not 0 <= self.findings_share <= 1:
            raise ValueError(f"--findings-share must be between 0 and 1, got {self.findings_share}")
        check_retry_options(self.max_retries, self.max_invalid_retries)
        if self.max_cost is not None and self.max_cost < 0:
            raise ValueError("--max-cost must be >= 0")

    @property
    def findings(self) -> float:
        """The share of studies given a findings turn: 0 under --no-findings."""
        return 0.0 if self.no_findings else self.findings_share

    @property
    def fractions(self) -> tuple[float, ...]:
        try:
            return tuple(float(x) for x in str(self.split_fractions).split(","))
        except ValueError:
            return ()


def parse_config(argv: list[str] | None = None, description: str | None = None) -> Config:
    """Config from YAML defaults and flags; a user mistake exits with code 2 and one line."""
    (config,) = parse([Config], argv, prog="python -m dataprep", description=description)
    return config
