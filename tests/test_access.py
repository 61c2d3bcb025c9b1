"""A LAN deployment's login and TLS: users read from a file or the environment (each mistake one line that never
quotes a password), a wrong password refused over HTTP, and https served on loopback with a certificate made here
(openssl), checked before anything loads."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file
from vision_server import VisionServer

import app
from app_lib.access import AUTH_ENV, check_tls, read_users
from app_lib.config import parse_config
from cxr_vqa.errors import UserError
from cxr_vqa.remote import RemoteModel, parse_remote

ROOT = Path(__file__).resolve().parents[1]
FILM = str(ROOT / "assets" / "examples" / "normal.png")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_users_come_from_a_file_or_the_environment(tmp_path):
    users = tmp_path / "users.txt"
    users.write_text("# radiology\nana:s3cret:with:colons\n\n  ben : pw2  \n")
    users.chmod(0o600)
    assert read_users(str(users), {}) == [("ana", "s3cret:with:colons"), ("ben", "pw2")]  # spaces around: not in it
    assert read_users(None, {AUTH_ENV: "ana:pw1,ben:pw2"}) == [("ana", "pw1"), ("ben", "pw2")]
    assert read_users(None, {}) is None  # no login


@pytest.mark.parametrize(
    ("text", "env", "says"),
    [
        ("ana:pw\nben-without-password\n", None, "line 2: expected user:password"),
        ("ana:\n", None, "line 1: expected user:password"),
        (":hunter2\n", None, "line 1: expected user:password"),
        ("ana:pw1\nana:pw2\n", None, "line 2: user 'ana' is given twice"),
        ("# nobody yet\n", None, "no user:password in it"),
        (None, "ana:pw1,hunter2", "$CXR_VQA_AUTH entry 2: expected user:password"),
        ("ana:pw\n", "ben:pw", "not both"),
    ],
)
def test_a_malformed_user_list_is_one_line_without_its_passwords(tmp_path, text, env, says):
    path = None
    if text is not None:
        path = tmp_path / "users.txt"
        path.write_text(text)
    with pytest.raises(UserError) as err:
        read_users(str(path) if path else None, {AUTH_ENV: env} if env else {})
    assert says in str(err.value) and "\n" not in str(err.value)
    assert "hunter2" not in str(err.value) and "pw1" not in str(err.value)


def test_an_unreadable_user_file_is_one_line(tmp_path, run_cli):
    with pytest.raises(UserError, match=r"--auth-file .*missing.txt: cannot read it \(No such file or directory\)"):
        read_users(str(tmp_path / "missing.txt"), {})
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00ana")
    with pytest.raises(UserError, match="cannot read it"):
        read_users(str(tmp_path / "binary.txt"), {})
    code, line = run_cli(app.main, ["--base", "none", "--remote", "v=http://127.0.0.1:9/v1#m",
                                    "--auth-file", str(tmp_path / "missing.txt")])  # fmt: skip
    assert code == 2 and "cannot read it" in line


@pytest.fixture(scope="module")
def vision():
    with VisionServer({"vision-test"}) as server:
        yield server


def serve(vision, tmp_path, **launch):
    remote = RemoteModel(parse_remote(f"vis={vision.url}#vision-test"), timeout=5)
    demo = app.create_demo(None, remotes=[remote], votes_db=tmp_path / "votes.sqlite")
    _, url, _ = app.serve(demo, host="127.0.0.1", port=free_port(), queue_size=4, max_file_size="5mb",
                          prevent_thread_lock=True, quiet=True, **launch)  # fmt: skip
    return demo, url


def test_over_http_a_wrong_password_is_refused_and_the_right_one_answers(vision, tmp_path):
    demo, url = serve(vision, tmp_path, auth=read_users(None, {AUTH_ENV: "ana:correct-horse"}))
    try:
        assert httpx.post(f"{url}login", data={"username": "ana", "password": "wrong"}).status_code == 400
        assert httpx.get(f"{url}config").status_code == 401  # nothing of the app without a login
        assert httpx.post(f"{url}gradio_api/upload", files={"files": ("x.png", b"x")}).status_code == 401
        with pytest.raises(ValueError, match="Could not login"):
            Client(url, auth=("ana", "wrong"), verbose=False)
        client = Client(url, auth=("ana", "correct-horse"), verbose=False)
        assert client.predict(handle_file(FILM), "Is it normal?", api_name="/compare_all")["vis"].startswith("No")
    finally:
        demo.close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 and its key, made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)  # fmt: skip
    return cert, key


def test_tls_serves_https_with_the_given_certificate_on_loopback(vision, tmp_path, certificate):
    cert, key = certificate
    check_tls(str(cert), str(key))
    demo, url = serve(vision, tmp_path, ssl_certfile=str(cert), ssl_keyfile=str(key))
    try:
        assert url.startswith("https://")
        https = url.replace("localhost", "127.0.0.1")
        assert httpx.get(https, verify=str(cert)).status_code == 200  # verified against this certificate
        with pytest.raises(httpx.HTTPError):
            httpx.get(https.replace("https://", "http://"), timeout=5)  # no plain http on that port
        client = Client(https, verbose=False, ssl_verify=False)
        assert client.predict(handle_file(FILM), "Is it normal?", api_name="/compare_all")["vis"].startswith("No")
        port = https.rstrip("/").rsplit(":", 1)[1]
        health = [sys.executable, "-m", "app_lib.health"]  # the Dockerfile's HEALTHCHECK
        env = {**os.environ, "PYTHONPATH": str(ROOT), "GRADIO_SERVER_PORT": port}
        assert subprocess.run(health, env=env, capture_output=True).returncode == 0
    finally:
        demo.close()
    assert subprocess.run(health, env=env, capture_output=True).returncode == 1  # nothing answers there now


def test_tls_options_are_checked_before_anything_loads(tmp_path, certificate, run_cli):
    cert, key = certificate
    (tmp_path / "garbage.pem").write_text("not a key")
    remote = ["--base", "none", "--remote", "v=http://127.0.0.1:9/v1#m"]
    for extra, says in [
        (["--ssl-certfile", str(cert)], "give both --ssl-certfile and --ssl-keyfile, or neither"),
        (["--ssl-certfile", str(cert), "--ssl-keyfile", str(tmp_path / "no.pem")], "no such file"),
        (["--ssl-certfile", str(cert), "--ssl-keyfile", str(tmp_path / "garbage.pem")], "not a PEM certificate"),
    ]:
        code, line = run_cli(app.main, remote + extra)
        assert code == 2 and says in line
    assert parse_config([*remote, "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]).ssl_keyfile == str(key)
