"""The smoke client against a local OpenAI-format HTTP server on 127.0.0.1.

The server is a plain http.server that answers like SGLang's /v1/chat/completions: the real
model server cannot run here (SGLang needs GPUs) and is another area's work; what is under test
is the client (request shape, auth header, health wait, empty-answer and error detection).
"""

from __future__ import annotations

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from keye_model.serve import smoke


class FakeOpenAIServer:
    """Records requests; answers with ``answer`` (None = malformed body), optional API key check."""

    def __init__(self, answer: str | None = "A colourful gradient.", api_key: str | None = None):
        self.answer, self.api_key, self.requests = answer, api_key, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def _send(self, code: int, body: dict | str) -> None:
                data = (json.dumps(body) if isinstance(body, dict) else body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(200 if self.path == "/health" else 404, {})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((self.path, dict(self.headers), body))
                if outer.api_key and self.headers.get("Authorization") != f"Bearer {outer.api_key}":
                    self._send(401, {"error": "bad key"})
                elif outer.answer is None:
                    self._send(200, "not json")
                else:
                    msg = {"role": "assistant", "content": outer.answer}
                    self._send(200, {"model": "keye", "choices": [{"index": 0, "message": msg}]})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_sample_png_is_a_valid_image():
    img = Image.open(io.BytesIO(smoke.sample_png(32)))
    img.load()
    assert img.size == (32, 32) and img.mode == "RGB"
    assert img.getpixel((10, 3)) == (40, 12, 128)


def test_request_is_image_then_text():
    payload = smoke.build_request()
    content = payload["messages"][0]["content"]
    assert [part["type"] for part in content] == ["image_url", "text"]
    url = content[0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == smoke.sample_png()
    assert payload["temperature"] == 0.0 and payload["max_tokens"] > 0


def test_smoke_passes_on_answer_and_sends_the_key():
    with FakeOpenAIServer(api_key="sekrit") as server:
        smoke.wait_healthy(server.url, timeout_s=5, api_key="sekrit")
        result = smoke.chat_smoke_test(server.url, api_key="sekrit", timeout_s=10)
    assert result.answer == "A colourful gradient." and result.model == "keye"
    assert result.latency_s > 0
    path, headers, body = server.requests[0]
    assert path == "/v1/chat/completions"
    assert headers["Authorization"] == "Bearer sekrit"
    assert body["messages"][0]["content"][1]["text"] == smoke.PROMPT


@pytest.mark.parametrize(
    ("server_kwargs", "client_key", "needle"),
    [
        ({"answer": "   "}, None, "empty answer"),
        ({"answer": None}, None, "no chat completion"),
        ({"api_key": "right"}, "wrong", "HTTP 401"),
    ],
)
def test_smoke_fails_on_bad_answers(server_kwargs, client_key, needle):
    with FakeOpenAIServer(**server_kwargs) as server:
        with pytest.raises(smoke.SmokeTestError, match=needle):
            smoke.chat_smoke_test(server.url, api_key=client_key, timeout_s=10)


def test_smoke_unreachable_and_health_timeout():
    with FakeOpenAIServer() as server:
        url = server.url
    # The server is closed now: nothing listens on that 127.0.0.1 port.
    with pytest.raises(smoke.SmokeTestError, match="unreachable"):
        smoke.chat_smoke_test(url, timeout_s=2)
    with pytest.raises(smoke.SmokeTestError, match="not healthy"):
        smoke.wait_healthy(url, timeout_s=0.3, poll_s=0.1)


def test_cli_exit_codes(monkeypatch, capsys):
    with FakeOpenAIServer(api_key="k") as server:
        monkeypatch.setenv("SGLANG_API_KEY", "k")
        assert (
            smoke.main(["--url", server.url, "--api-key-env", "SGLANG_API_KEY", "--timeout", "5"])
            == 0
        )
        assert json.loads(capsys.readouterr().out)["ok"] is True
        monkeypatch.setenv("SGLANG_API_KEY", "wrong")
        assert (
            smoke.main(["--url", server.url, "--api-key-env", "SGLANG_API_KEY", "--timeout", "5"])
            == 1
        )
        monkeypatch.delenv("SGLANG_API_KEY")
        assert smoke.main(["--url", server.url, "--api-key-env", "SGLANG_API_KEY"]) == 1
