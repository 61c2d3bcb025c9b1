"""An evaluation resumes into its --out only with the same models' content (`cxr_vqa.identity`), and `--base` /
`--adapter` take `ID@REVISION` for Hub models. The Hub is a cache built here (refs/<revision> -> snapshots/<commit>),
read offline exactly as huggingface_hub reads a real one: nothing is downloaded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from cxr_vqa import identity
from cxr_vqa.identity import DigestCache, identity_change, model_identity
from cxr_vqa.model import adapter_specs, load_model
from cxr_vqa.sources import ModelLoadError, resolve, split_revision
from evaluation import __main__ as ev
from evaluation import evaluate as evaluate_module

COMMIT_1, COMMIT_2 = "1" * 40, "2" * 40


def _args(dataset, out, base, adapter=None):
    args = ["--dataset", dataset, "--out", str(out), "--base", base, "--no-4bit", "--device", "cpu", "--limit", "1",
            "--max-new-tokens", "2", "--resamples", "100", "--no-ablation"]  # fmt: skip
    return args + (["--adapter", adapter] if adapter else [])


def _rewrite_in_place(file: Path, seed: int) -> None:
    """New weights of the same shapes into the same file: a retrain in place (same size, other bytes)."""
    with safe_open(file, "pt") as stream:
        metadata = stream.metadata()
    torch.manual_seed(seed)
    save_file({k: torch.randn_like(v) for k, v in load_file(file).items()}, file, metadata=metadata)


def _no_model(*args, **kwargs):
    pytest.fail("a finished report was resumed by loading the model again")


def test_a_retrained_adapter_into_the_same_out_is_one_line_naming_it(coarse_model, qa_dataset, tmp_path, run_cli,
                                                                     monkeypatch):  # fmt: skip
    base, trained = coarse_model
    adapter = shutil.copytree(trained, tmp_path / "adapter")
    out = tmp_path / "report"
    ev.main(_args(qa_dataset, out, base, str(adapter)))
    before = (out / "predictions.jsonl").read_text()
    recorded = json.loads((out / "run.json").read_text())["models"]
    assert set(recorded) == {"base", "tuned"} and recorded["tuned"]["from"] == str(adapter)
    assert set(recorded["tuned"]["files"]) == {"adapter_config.json", "adapter_model.safetensors"}

    # unchanged: resumes, asks nothing again (the model is not even loaded), the same answers
    monkeypatch.setattr(evaluate_module, "load_model", _no_model)
    ev.main(_args(qa_dataset, out, base, str(adapter)))
    assert (out / "predictions.jsonl").read_text() == before
    # the same content somewhere else is the same model: a moved folder resumes
    moved = shutil.copytree(adapter, tmp_path / "moved")
    ev.main(_args(qa_dataset, out, base, str(moved)))

    size = (adapter / "adapter_model.safetensors").stat().st_size
    _rewrite_in_place(adapter / "adapter_model.safetensors", seed=7)
    assert (adapter / "adapter_model.safetensors").stat().st_size == size  # only the content tells them apart
    code, line = run_cli(ev.main, _args(qa_dataset, out, base, str(adapter)))
    assert code == 2 and line.count("\n") == 0
    assert f"model 'tuned' ({adapter}) is not the one" in line and "adapter_model.safetensors differs" in line
    assert "pick a new --out" in line
    assert (out / "predictions.jsonl").read_text() == before  # nothing mixed in


def test_a_base_changed_in_place_is_refused(coarse_model, qa_dataset, tmp_path, run_cli):
    base = shutil.copytree(coarse_model[0], tmp_path / "base")
    out = tmp_path / "report"
    ev.main(_args(qa_dataset, out, str(base)))
    recorded = json.loads((out / "run.json").read_text())["models"]["base"]["files"]
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(recorded)
    _rewrite_in_place(base / "model.safetensors", seed=3)
    code, line = run_cli(ev.main, _args(qa_dataset, out, str(base)))
    assert code == 2 and f"the base model {base} is not the one" in line and "model.safetensors differs" in line


def test_a_run_json_without_content_resumes_on_its_paths(coarse_model, qa_dataset, tmp_path, monkeypatch, run_cli):
    """A report written before content identity: its paths are all it can be matched by, as before."""
    out = tmp_path / "report"
    ev.main(_args(qa_dataset, out, coarse_model[0]))
    run = json.loads((out / "run.json").read_text())
    del run["models"]
    (out / "run.json").write_text(json.dumps(run))
    monkeypatch.setattr(evaluate_module, "load_model", _no_model)
    ev.main(_args(qa_dataset, out, coarse_model[0]))
    assert "models" in json.loads((out / "run.json").read_text())  # recorded from now on
    (out / "run.json").write_text(json.dumps(run))
    moved = shutil.copytree(coarse_model[0], tmp_path / "moved")
    code, line = run_cli(ev.main, _args(qa_dataset, out, str(moved)))
    assert code == 2 and "other settings (base)" in line


def test_digests_are_cached_by_stamp_and_a_fresh_file_is_not(tmp_path, monkeypatch):
    file = tmp_path / "weights.bin"
    file.write_bytes(b"a" * 1000)
    cache = DigestCache(tmp_path / "digests.json")
    first = cache.digest(file)
    assert first.startswith("1000:") and not cache.entries  # written just now: its stamp may not yet be final
    monkeypatch.setattr(identity, "RACY_SECONDS", -1.0)
    assert cache.digest(file) == first and cache.entries
    cache.save()
    reads = []
    monkeypatch.setattr(identity.hashlib, "sha256", lambda: reads.append(1) or pytest.fail("read a cached file"))
    assert DigestCache(tmp_path / "digests.json").digest(file) == first  # another process: from the file
    monkeypatch.undo()
    file.write_bytes(b"b" * 1000)  # same size, other bytes: a new ctime at least
    assert DigestCache(tmp_path / "digests.json").digest(file) != first


def test_identity_change_says_what_differs():
    files = {"files": {"adapter_config.json": "1:a", "adapter_model.safetensors": "9:b"}}
    assert identity_change(files, json.loads(json.dumps(files))) is None
    other = {"files": {**files["files"], "adapter_model.safetensors": "9:c"}}
    assert identity_change(files, other) == "adapter_model.safetensors differs"
    hub = {"hub": "org/m", "revision": "main", "commit": COMMIT_1}
    assert identity_change(hub, {**hub, "revision": COMMIT_1}) is None  # another name of the same commit
    assert identity_change(hub, {**hub, "commit": COMMIT_2}) == f"commit {COMMIT_1} -> {COMMIT_2}"
    assert identity_change(files, hub) == "a local folder then, a Hub model now"


def test_split_revision_and_a_local_path_with_an_at_sign(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert split_revision("llava-hf/llava-1.5-7b-hf@v1.0") == ("llava-hf/llava-1.5-7b-hf", "v1.0")
    assert split_revision("llava-hf/llava-1.5-7b-hf") == ("llava-hf/llava-1.5-7b-hf", None)
    Path("runs/lr@1e-4").mkdir(parents=True)  # a folder that exists wins over the Hub reading of its name
    assert split_revision("runs/lr@1e-4") == ("runs/lr@1e-4", None)
    # several bare adapters are named after their ids, the revision left out
    assert adapter_specs(["org/a@v1", "org/b@v2"]) == {"a": "org/a@v1", "b": "org/b@v2"}
    for bad, why in [("org/m@", "not ID@REVISION"), ("@main", "not ID@REVISION"), ("runs@v2", "is a local folder")]:
        with pytest.raises(ModelLoadError, match=why):
            split_revision(bad)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A Hub cache with repositories whose refs name snapshots: {repo: {revision: (commit, folder)}}."""
    from huggingface_hub import constants

    root = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))

    def add(repo: str, revisions: dict[str, tuple[str, str | Path]]) -> str:
        folder = root / f"models--{repo.replace('/', '--')}"
        (folder / "refs").mkdir(parents=True)
        for revision, (commit, source) in revisions.items():
            (folder / "refs" / revision).write_text(commit)
            if not (folder / "snapshots" / commit).exists():
                shutil.copytree(source, folder / "snapshots" / commit)
        return repo

    return add


def test_a_revision_reaches_every_loader_and_the_page(hub, coarse_model, random_adapter_dir, second_adapter_dir,
                                                      tmp_path):  # fmt: skip
    changed = shutil.copytree(coarse_model[0], tmp_path / "changed")
    _rewrite_in_place(changed / "model.safetensors", seed=5)
    base = hub("org/tiny", {"main": (COMMIT_1, coarse_model[0]), "v2": (COMMIT_2, changed)})
    weights = {rev: load_file(Path(folder) / "model.safetensors") for rev, folder in
               [("main", coarse_model[0]), ("v2", changed)]}  # fmt: skip
    for spec, rev in [(base, "main"), (f"{base}@v2", "v2"), (f"{base}@{COMMIT_2}", "v2")]:
        vqa = load_model(spec, load_in_4bit=False, device="cpu")
        state = vqa.model.state_dict()
        key = next(k for k in weights[rev] if k.endswith("q_proj.weight"))
        loaded = next(v for k, v in state.items() if k.endswith(key.split(".", 1)[-1]))
        assert torch.equal(loaded, weights[rev][key]), spec
        assert vqa.base_name == spec
    adapter = hub("org/lora", {"main": (COMMIT_1, random_adapter_dir), "r4": (COMMIT_2, second_adapter_dir)})
    assert resolve(f"{adapter}@r4", "adapter").config["r"] == 4 and resolve(adapter, "adapter").config["r"] == 8
    vqa = load_model(f"{base}@v2", f"{adapter}@r4", load_in_4bit=False, device="cpu")
    assert vqa.model.peft_config["tuned"].r == 4 and vqa.adapters == {"tuned": f"{adapter}@r4"}
    import app  # the page's model list says which revisions it serves

    page = app.create_demo(vqa, votes_db=tmp_path / "v.sqlite").get_config_file()
    line = f"Base model: `{base}` at revision `v2` (full precision) · Adapters: `tuned` = `{adapter}` at revision `r4`"
    assert line in json.dumps(page, default=str, ensure_ascii=False)
    with pytest.raises(ModelLoadError, match="'org/tiny' at revision 'nope'.*HF_HUB_OFFLINE=1") as err:
        resolve(f"{base}@nope")
    assert "\n" not in str(err.value)


def test_a_pinned_hub_base_is_recorded_and_its_commit_is_its_identity(hub, coarse_model, qa_dataset, tmp_path,
                                                                       run_cli, monkeypatch):  # fmt: skip
    changed = shutil.copytree(coarse_model[0], tmp_path / "changed")
    _rewrite_in_place(changed / "model.safetensors", seed=5)
    base = hub("org/tiny", {"main": (COMMIT_1, coarse_model[0]), "v1": (COMMIT_1, coarse_model[0]),
                            "v2": (COMMIT_2, changed)})  # fmt: skip
    out = tmp_path / "report"
    ev.main(_args(qa_dataset, out, f"{base}@v1"))
    run = json.loads((out / "run.json").read_text())
    assert run["base"] == f"{base}@v1"
    assert run["models"]["base"] == {"from": f"{base}@v1", "hub": base, "revision": "v1", "commit": COMMIT_1}
    assert json.loads((out / "metrics.json").read_text())["base"] == f"{base}@v1"
    monkeypatch.setattr(evaluate_module, "load_model", _no_model)
    ev.main(_args(qa_dataset, out, f"{base}@{COMMIT_1}"))  # the same commit by another name: resumes
    code, line = run_cli(ev.main, _args(qa_dataset, out, f"{base}@v2"))
    assert code == 2 and f"the base model {base}@v2 is not the one" in line and f"{COMMIT_1} -> {COMMIT_2}" in line


def test_the_app_shows_a_pinned_revision():
    from app_lib.tables import model_label

    assert model_label("llava-hf/llava-1.5-7b-hf@v1.0") == "`llava-hf/llava-1.5-7b-hf` at revision `v1.0`"
    assert model_label("runs/llava-cxr") == "`runs/llava-cxr`"


def test_model_identity_of_a_missing_model_is_one_line(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        model_identity(str(tmp_path / "gone"), "adapter")
