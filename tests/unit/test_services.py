"""The launching host's checks of outside services, against a fake W&B endpoint on loopback and an empty hub cache."""
from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from launcher.config import services

GOOD = "k" * 40


class FakeWandb(BaseHTTPRequestHandler):
    """W&B's GraphQL endpoint as far as the probe asks it: who is this key, does this entity exist."""

    def do_POST(self) -> None:  # noqa: N802
        import base64

        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        key = base64.b64decode(self.headers["Authorization"].split()[1]).decode().partition(":")[2]
        if key != GOOD:
            self.send_response(401)
            self.end_headers()
            return
        entity = body["variables"]["e"]
        data = {"viewer": {"id": "1", "entity": "me"}, "entity": {"id": "2"} if entity in ("me", "-") else None}
        out = json.dumps({"data": data}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def wandb_server():
    server = HTTPServer(("127.0.0.1", 0), FakeWandb)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_a_good_key_logs_online_and_a_bad_key_or_unknown_entity_goes_offline_saying_why(wandb_server):
    env = {"WANDB_BASE_URL": wandb_server, "WANDB_API_KEY": GOOD}
    assert services.wandb_offline_reason(env, "") == ""
    assert services.wandb_offline_reason(env, "me") == ""
    assert "has no entity 'nobody' (logging.wandb.entity)" in services.wandb_offline_reason(env, "nobody")
    bad = services.wandb_offline_reason({**env, "WANDB_API_KEY": "wrong"}, "")
    assert bad == f"{wandb_server} refused the API key (HTTP 401)"


def test_a_server_that_never_answers_costs_the_probe_timeout_not_wandbs_90_seconds():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts the connection in the kernel, never answers
    try:
        env = {"WANDB_BASE_URL": f"http://127.0.0.1:{silent.getsockname()[1]}", "WANDB_API_KEY": GOOD}
        t0 = time.monotonic()
        why = services.wandb_offline_reason(env, "", timeout_s=1.0)
        assert "no answer from" in why and time.monotonic() - t0 < 5
    finally:
        silent.close()


def test_the_key_from_wandb_login_counts_as_a_key(tmp_path):
    (tmp_path / ".netrc").write_text(f"machine api.wandb.ai\n  login user\n  password {GOOD}\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert services.wandb_key({"HOME": str(tmp_path)}) == GOOD
    assert services.wandb_key({"HOME": str(tmp_path / "nobody")}) == ""


def test_a_hub_id_missing_from_an_offline_cache_is_refused_with_the_ways_out(tmp_path):
    from launcher.errors import LauncherError

    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path)}
    with pytest.raises(LauncherError) as err:
        services.check_hub("example-org/not-cached", "", env)
    text = err.value.paragraph()
    assert "model.path='example-org/not-cached'" in text and "not in the local cache" in text
    assert "HF_HUB_OFFLINE=1" in text and "model.path=/path/to/model" in text
    assert services.looks_like_hub_id("org/name") and not services.looks_like_hub_id("/models/x")


def test_a_hub_id_in_the_cache_needs_no_network(tmp_path):
    """The cache layout huggingface_hub writes: models--org--name/refs/main and snapshots/<rev>/<files>."""
    repo = tmp_path / "models--example-org--cached"
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    for name in ("config.json", "model.safetensors", "tokenizer_config.json"):
        (snap / name).write_text("{}")
    services.check_hub("example-org/cached", "", {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path)})
