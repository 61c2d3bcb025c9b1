"""What leaves the machine is said and bounded: a default API key goes only to its own host (the app, evaluation and
dataprep alike), no share button anywhere on the page, a remote pane names the provider that receives the film,
--max-cost stops the remote models at the cap while the local ones answer, and Explore shows nothing of a real
dataset on a public Space (a synthetic one in full)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gradio as gr
import pytest
from PIL import Image
from vision_server import VisionServer

import app
from app_lib.config import parse_config
from app_lib.explore import Query
from app_lib.explore_tab import OFF, THUMBNAILS_ONLY, ExploreView
from app_lib.handlers import Handlers
from app_lib.votes import VoteStore
from cxr_vqa.endpoint import open_client
from cxr_vqa.errors import UserError
from cxr_vqa.generation import GenerationSettings
from cxr_vqa.lineup import Lineup
from cxr_vqa.model import load_model
from cxr_vqa.remote import RemoteModel, parse_remote
from cxr_vqa.vqa import BASE

FILM = Path(__file__).resolve().parents[1] / "assets" / "examples" / "normal.png"
SHARING = ("image", "gallery", "chatbot", "audio", "video", "imageeditor")  # Gradio's components with a share button


@pytest.fixture(scope="module")
def vision():
    with VisionServer({"vision-test"}) as server:
        yield server


# -- the key goes to its own host ------------------------------------------------------------------------------------


REFUSED = "$OPENAI_API_KEY goes only to api.openai.com"


@pytest.mark.parametrize(
    ("entry", "key_env"),
    [
        ("gpt=https://api.openai.com/v1#gpt-4o", "OPENAI_API_KEY"),  # OpenAI's own host: its default key
        ("az=https://x.openai.azure.com/openai/v1#gpt-4o", REFUSED),
        ("vllm=https://vllm.example.org/v1#tuned", REFUSED),
        ("vllm=https://vllm.example.org/v1#tuned#VLLM_KEY", "VLLM_KEY"),  # named: it goes where named
        ("gpt=https://api.openai.com/v1#gpt-4o#MY_KEY", "MY_KEY"),
        ("own=https://llm.example.org/v1#m#OPENAI_API_KEY", "OPENAI_API_KEY"),  # named on purpose: the operator's call
        ("local=http://127.0.0.1:8000/v1#tuned", None),  # this machine: only a named key
        ("box=http://gpu-box:8000/v1#tuned", None),  # plain http elsewhere: never a key
    ],
)
def test_a_remote_model_gets_the_default_key_only_from_its_own_host(entry, key_env):
    if key_env != REFUSED:
        assert parse_remote(entry).key_env == key_env
        return
    name, host = entry.split("=")[0], entry.split("/")[2]
    with pytest.raises(UserError) as err:
        parse_remote(entry)
    assert str(err.value) == (f"--remote {name}: {host} gets no key by default ({REFUSED}): name the environment "
                              f"variable that holds {host}'s key after the second # ({entry}#VARIABLE)")  # fmt: skip


@pytest.mark.parametrize(
    ("base_url", "api_key_env", "sent"),
    [
        (None, None, "sk-openai"),  # dataprep's default: OpenAI itself
        ("https://api.openai.com/v1", None, "sk-openai"),
        ("https://my-resource.openai.azure.com/openai/v1", None, "gets no key by default"),
        ("https://my-resource.openai.azure.com/openai/v1", "AZURE_KEY", "sk-azure"),  # as Azure users pass it
        ("http://127.0.0.1:8000/v1", None, "unused"),  # a local vLLM gets none
        ("http://gpu-box:8000/v1", "AZURE_KEY", "unused"),  # plain http: never in clear
    ],
)
def test_dataprep_and_evaluation_clients_follow_the_same_rule(monkeypatch, base_url, api_key_env, sent):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    monkeypatch.setenv("AZURE_KEY", "sk-azure")
    if sent.startswith("sk-") or sent == "unused":
        assert open_client(base_url, api_key_env=api_key_env).api_key == sent
    else:
        with pytest.raises(UserError, match=f"{sent}.*with --api-key-env VAR") as err:
            open_client(base_url, api_key_env=api_key_env)
        assert "sk-" not in str(err.value)


# -- the page --------------------------------------------------------------------------------------------------------


def test_no_share_button_anywhere_and_each_remote_pane_names_its_provider(vision, tmp_path, monkeypatch):
    monkeypatch.setenv("EX_KEY", "sk-example")
    Image.new("RGB", (8, 8)).save(tmp_path / "comparison.png")  # the Results tab's report image
    (tmp_path / "metrics.json").write_text("{}")
    remotes = [RemoteModel(parse_remote(f"vis={vision.url}#vision-test")),
               RemoteModel(parse_remote("gpt=https://api.example.org/v1#gpt-x#EX_KEY"))]  # fmt: skip
    demo = app.create_demo(None, remotes=remotes, votes_db=tmp_path / "v.sqlite", report_dir=tmp_path)
    config = demo.get_config_file()
    checked = [c for c in config["components"] if c["type"] in SHARING]
    assert {c["type"] for c in checked} >= {"image", "gallery", "chatbot"}  # the film, the maps, the panes
    assert all("share" not in (c["props"].get("buttons") or ["share"]) for c in checked), [
        (c["type"], c["props"].get("buttons")) for c in checked]  # fmt: skip
    assert "share" in gr.Image().buttons and "share" in gr.Gallery().buttons  # what Gradio shows unless told
    notes = {c["props"].get("elem_id"): c["props"].get("value") for c in config["components"]}
    port = vision.url.split(":")[2].split("/")[0]
    assert f"sends the film (as the model sees it) and the conversation to **this machine (127.0.0.1:{port})**" in (
        notes["model-vis-provider"])  # fmt: skip
    assert "to **api.example.org**" in notes["model-gpt-provider"]
    assert "**api.example.org** (gpt)" in notes["remote-notice"] and "blind A/B, batch" in notes["remote-notice"]


def test_max_cost_stops_the_remote_pane_at_the_cap_and_the_local_models_keep_answering(vision, tiny_model_dir,
                                                                                        tmp_path):  # fmt: skip
    # 1000 USD per million tokens: one answer (about 590 tokens in, 12 out) costs about 0.6 USD of the 1 USD cap
    config = parse_config(["--base", "none", "--remote", f"vis={vision.url}#vision-test", "--max-cost", "1",
                           "--price-input", "1000", "--price-output", "1000"])  # fmt: skip
    (remote,) = config.remote_models()
    vqa = load_model(tiny_model_dir, load_in_4bit=False, device="cpu")
    h = Handlers(Lineup(vqa, [remote]), VoteStore(tmp_path / "v.sqlite"), settings=GenerationSettings(12))
    film = h.vqa.prepare_film(str(FILM))
    sent = vision.count["chat"]
    assert h.panes == [BASE, "tuned", "vis"]  # a base without an adapter keeps the fine-tuned pane, empty
    first = list(h.ask(film, "Is it normal?", None, 12, 0.0, 1.0))[-1]
    assert first[2][-1]["content"].startswith("No, mean grey") and vision.count["chat"] == sent + 1
    assert remote.budget.spent == pytest.approx((579 + 11) * 1000 / 1e6)  # the usage the server reported
    second = list(h.ask(film, "Is it normal?", None, 12, 0.0, 1.0))[-1]
    assert second[2][-1]["content"] == (
        "error: vis answers no more: the remote models' spending cap of 1 USD (--max-cost) is reached"
    )
    assert second[0][-1]["content"] and second[0][-1]["content"] != "…"  # the base answered
    assert vision.count["chat"] == sent + 1  # past the cap nothing is sent
    assert h.compare_all(str(FILM), "Is it normal?")["vis"].startswith("error: vis answers no more")
    assert h.compare_all(str(FILM), "Is it normal?")[BASE]


# -- Explore on a public Space ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_report(synthetic_report, synthetic_data, tmp_path_factory):
    """The synthetic report as if its dataset were a real release's: the same films, stats.json not synthetic."""
    data = tmp_path_factory.mktemp("real-data") / "data"
    shutil.copytree(synthetic_data, data)
    stats = json.loads((data / "stats.json").read_text())
    (data / "stats.json").write_text(json.dumps({**stats, "synthetic": False}))
    report = tmp_path_factory.mktemp("real-report") / "report"
    shutil.copytree(synthetic_report, report)
    run = json.loads((report / "run.json").read_text())
    (report / "run.json").write_text(json.dumps({**run, "dataset": str(data)}))
    return report


def test_on_a_space_explore_shows_nothing_of_a_real_dataset_and_a_synthetic_one_in_full(synthetic_report,
                                                                                       real_report):  # fmt: skip
    hidden = ExploreView(real_report, on_space=True)
    assert hidden.mode == "off" and hidden.note == OFF and hidden.table is None
    with pytest.raises(gr.Error, match="Explore is off here"):
        hidden.explore("", "", "", False)  # not over the API either: no question id, no text
    shown = ExploreView(synthetic_report, on_space=True)  # the project's own phantoms: the demo keeps working
    assert shown.mode == "full" and shown.explore("", "", "", False)["total"] == len(shown.table)
    assert shown.choose_id(shown.table.ids[0])[0].endswith(".png")
    assert ExploreView(real_report, on_space=False).mode == "full"  # a LAN or a laptop: the operator's data
    thumbs = ExploreView(real_report, on_space=True, public="thumbnails")
    assert thumbs.mode == "thumbnails" and "![film](data:image/png" in str(thumbs.page(Query(), 1)[0]["data"][0][0])
    with pytest.raises(gr.Error, match="thumbnails only"):
        thumbs.choose_id(thumbs.table.ids[0])  # no full film
    assert THUMBNAILS_ONLY in thumbs.note
    assert ExploreView(synthetic_report, on_space=False, public="off").mode == "off"  # the operator's choice wins
