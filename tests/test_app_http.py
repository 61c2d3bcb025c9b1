"""The app served on 127.0.0.1 and called over HTTP with gradio_client, as a script or another service would."""

from __future__ import annotations

import io
import socket
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from gradio_client.utils import QueueError
from PIL import Image

import app
from cxr_vqa.generation import GenerationSettings
from cxr_vqa.images import load_film
from cxr_vqa.model import load_model
from cxr_vqa.template import add_question
from cxr_vqa.vqa import BASE, TUNED

ROOT = Path(__file__).resolve().parents[1]
FILM = ROOT / "assets" / "examples" / "pleural_effusion.png"
SETTINGS = GenerationSettings(max_new_tokens=24)  # long enough that 20 requests overlap, short enough to be quick
QUEUE_SIZE = 2
MAX_FILE_SIZE = 200 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def vqa(tiny_model_dir, random_adapter_dir):
    return load_model(tiny_model_dir, random_adapter_dir, device="cpu")


@pytest.fixture(scope="module")
def server(vqa, tmp_path_factory):
    votes_db = tmp_path_factory.mktemp("votes") / "votes.sqlite"
    demo = app.create_demo(vqa, votes_db=votes_db, settings=SETTINGS)
    _, url, _ = app.serve(
        demo, host="127.0.0.1", port=free_port(), queue_size=QUEUE_SIZE, max_file_size=f"{MAX_FILE_SIZE}b",
        prevent_thread_lock=True, quiet=True,
    )  # fmt: skip
    yield {"url": url, "votes_db": votes_db}
    demo.close()


@pytest.fixture(scope="module")
def client(server):
    return Client(server["url"], verbose=False)


def compare(client: Client, path, question: str):
    return client.predict(handle_file(str(path)), question, api_name="/compare")


def test_compare_over_http_equals_the_model_core(client, vqa):
    base, tuned = compare(client, FILM, "Is there a pleural effusion?")
    film = load_film(str(FILM), 336)
    expected = vqa.compare(film.image, add_question(None, "Is there a pleural effusion?"), settings=SETTINGS)
    assert (base, tuned) == (expected[BASE].text, expected[TUNED].text) and base != tuned


def test_bad_input_over_http_gets_its_message_and_the_server_keeps_serving(client, tmp_path):
    (tmp_path / "cut.png").write_bytes(FILM.read_bytes()[:2000])
    (tmp_path / "notes.txt").write_text("patient,report\n1,clear\n")
    cases = [
        (tmp_path / "cut.png", "Is there a pleural effusion?", "PNG image is truncated or corrupt"),
        (tmp_path / "notes.txt", "Is there a pleural effusion?", "not an image: expected PNG, JPEG or DICOM"),
        (FILM, "  \x00 ", "empty question"),
        (FILM, "Is there an effusion? " * 900, "-token limit for one question"),
    ]
    for path, question, message in cases:
        with pytest.raises(AppError, match=message):
            compare(client, path, question)
    assert all(compare(client, FILM, "Is there a pleural effusion?"))


def test_uploads_over_the_size_limit_are_refused(client, server, tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)  # incompressible: ~480 KB
    big = tmp_path / "big.png"
    Image.fromarray(noise).save(big)
    assert big.stat().st_size > MAX_FILE_SIZE
    with big.open("rb") as file:
        response = httpx.post(f"{server['url']}gradio_api/upload", files={"files": file})
    assert response.status_code == 413
    with pytest.raises(ValueError, match="exceeds the maximum file size"):  # gradio_client checks before sending
        compare(client, big, "Is there a pleural effusion?")


def test_files_outside_the_app_are_not_served(server):
    url = server["url"]
    for path in ["/etc/passwd", str(ROOT / "app.py"), str(server["votes_db"]), str(FILM)]:
        assert httpx.get(f"{url}gradio_api/file={path}").status_code == 403, path
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, "PNG")
    uploaded = httpx.post(f"{url}gradio_api/upload", files={"files": ("x.png", buffer.getvalue())}).json()[0]
    assert httpx.get(f"{url}gradio_api/file={uploaded}").status_code == 200  # the route works for its own files


def test_twenty_concurrent_clients_are_answered_or_told_the_queue_is_full(server):
    n = 20
    start = threading.Barrier(n)
    outcomes: list = [None] * n

    def one(i: int) -> None:
        client = Client(server["url"], verbose=False)
        start.wait()  # all requests at once, so they overlap the first one's generation
        try:
            outcomes[i] = compare(client, FILM, "Is there a pleural effusion?")
        except QueueError as err:
            outcomes[i] = err

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    answered = [o for o in outcomes if isinstance(o, tuple)]
    full = [o for o in outcomes if isinstance(o, QueueError)]
    assert len(answered) + len(full) == n, outcomes  # nothing else: no crash, no hang
    assert all("queue is full" in str(err).lower() for err in full)
    assert len(set(answered)) == 1 and all(answered[0])  # greedy: every answered client got the same pair
    assert len(answered) >= 1 and len(full) >= 1  # the bound was hit and enforced
    assert all(compare(Client(server["url"], verbose=False), FILM, "Is there a pleural effusion?"))  # still alive
