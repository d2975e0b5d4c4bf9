"""The page's HTTP API from Python, with the standard library only, and ``minisd serve`` as a child process.

Gradio gives every event of the page an HTTP route: ``POST /gradio_api/call/<name>`` with ``{"data": [...]}``
(the inputs in the page's order) answers an event id; ``GET /gradio_api/call/<name>/<id>`` streams the
result as server-sent events, ending in ``complete`` (the outputs) or ``error`` (the message). Uploads go to
``POST /gradio_api/upload`` first, and the call names the uploaded file. The load test
(``benchmarks/web_load.py``) and the server tests use this module; so can a user's script::

    from minisd.web.client import call, generate_inputs
    outcome = call("http://127.0.0.1:7860", "generate", generate_inputs("a handwritten digit 7"))
"""

import http.client
import json
import os
import re
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BUSY = "Queue is full"  # Gradio's answer when the queue holds as many requests as it may


@dataclass
class Outcome:
    """How one call ended: ``status`` is ``"complete"`` (``data``: the outputs), ``"busy"`` (the queue was full)
    or ``"error"`` (``message``: what the server said)."""

    status: str
    data: Any = None
    message: str = ""


def generate_inputs(prompt: Any, *, negative_prompt: Any = "", model: Any = "mnist", sampler: Any = "dpmpp_2m",
                    steps: Any = 20, guidance: Any = 4.0, seed: Any = 0, random_seed: bool = False,
                    images: Any = 1, editor: Any = None, strength: Any = 0.8) -> list[Any]:
    """The inputs of the ``generate`` event, in the page's order (any value may be a bad one, to test)."""
    return [prompt, negative_prompt, model, sampler, steps, guidance, seed, random_seed, images, editor, strength]


def file_data(server_path: str) -> dict[str, Any]:
    """How a call names a file uploaded with :func:`upload`."""
    return {"path": server_path, "meta": {"_type": "gradio.FileData"}}


def call(url: str, name: str, data: list[Any], *, timeout: float = 600) -> Outcome:
    """Call the page's event ``name`` with ``data`` and wait for its end. Values go as JSON as they are (NaN
    included, as Python writes it), so a test can send what a browser would not."""
    body = json.dumps({"data": data}).encode()
    request = urllib.request.Request(f"{url.rstrip('/')}/gradio_api/call/{name}", body,
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            event_id = json.loads(response.read())["event_id"]
        with urllib.request.urlopen(f"{url.rstrip('/')}/gradio_api/call/{name}/{event_id}",
                                    timeout=timeout) as response:
            return _last_event(response.read().decode())
    except urllib.error.HTTPError as err:
        return _classify(err.read().decode(errors="replace"))
    except (http.client.HTTPException, urllib.error.URLError, OSError) as err:  # the server went away
        return Outcome("error", message=f"the connection failed: {type(err).__name__}: {err}")


def _last_event(stream: str) -> Outcome:
    """The end of a server-sent event stream: ``event: complete`` or ``event: error``, each with ``data:``."""
    events = re.findall(r"^event: (\w+)\ndata: (.*)$", stream, flags=re.MULTILINE)
    for kind, payload in reversed(events):
        if kind == "complete":
            return Outcome("complete", json.loads(payload))
        if kind == "error":
            return _classify(payload)
    return Outcome("error", message=f"the stream ended without a result: {stream[-200:]!r}")


def _classify(payload: str) -> Outcome:
    try:
        message = json.loads(payload)
        if isinstance(message, dict):
            message = message.get("error") or message.get("detail") or ""
    except json.JSONDecodeError:
        message = payload
    message = str(message or "")
    return Outcome("busy" if BUSY in message else "error", message=message)


def upload(url: str, data: bytes, filename: str = "upload.png") -> tuple[int, Any]:
    """Send a file to the upload route; returns (HTTP status, the server's paths or its message)."""
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{filename}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"{url.rstrip('/')}/gradio_api/upload", body,
                                     {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``minisd serve`` in a child process on a free loopback port, for as long as the ``with`` block runs::

        with ServerProcess(["--outputs", "tmp/out"]) as server:
            call(server.url, "generate", generate_inputs("a handwritten digit 7"))
    """

    def __init__(self, arguments: list[str] = (), *, threads: int = 1, start_timeout: float = 180):
        self.arguments, self.threads, self.start_timeout = list(arguments), threads, start_timeout
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.log: list[str] = []

    def __enter__(self) -> "ServerProcess":
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "GRADIO_ANALYTICS_ENABLED": "False"}
        self.process = subprocess.Popen([sys.executable, "-m", "minisd", "serve", "--port", str(self.port),
                                         *self.arguments], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, env=env)
        ready = threading.Event()

        def read_output() -> None:  # all of it, always: a full pipe would stop the server
            for line in self.process.stdout:
                self.log.append(line)
                if line.startswith("minisd serve: http"):
                    ready.set()
            ready.set()

        threading.Thread(target=read_output, daemon=True).start()
        ready.wait(self.start_timeout)
        if not self.alive:
            raise RuntimeError("minisd serve did not start:\n" + "".join(self.log[-40:]))
        return self

    @property
    def alive(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(self.url + "/", timeout=10) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def peak_memory_mib(self) -> float:
        """The server's peak resident memory so far (Linux: VmHWM of /proc/PID/status)."""
        text = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1)) / 1024

    def __exit__(self, *exc: Any) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
