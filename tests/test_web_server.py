"""``minisd serve`` over its HTTP API: the load test and every bad input of ``benchmarks/web_load.py`` (the same
script that makes the figures in benchmarks/README.md), image-to-image and inpainting, and the warnings of an
open host. Skipped without the web extra, but for the message that asks for it."""

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from minisd.cli import main
from minisd.pipelines.png_settings import read_settings

ROOT = Path(__file__).resolve().parent.parent


def test_serve_without_the_web_extra_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio fails
    assert main(["serve", "--port", "1"]) == 2
    assert "pip install 'minisd[web]'" in capsys.readouterr().err


def test_twenty_concurrent_requests_and_every_bad_input(tmp_path):
    """Each of 20 requests at once completes or is told the server is busy (none fails), the server stays up and
    serves later requests, and each bad input gets a message that names the problem."""
    pytest.importorskip("gradio", reason="the web extra is not installed: pip install -e '.[web]'")
    figures = tmp_path / "load.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "web_load.py"), "--requests", "20",
                          "--steps", "2", "--images", "1", "--threads", "1", "--json", str(figures)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    results = json.loads(figures.read_text())
    assert results["sent"] == 20 and results["failed"] == 0
    assert results["completed"] + results["busy"] == 20 and results["completed"] >= 1
    assert results["busy"] == 0 or "Queue is full" in results["busy_message"]
    assert results["server_up_after_load"] and results["later_request"] == "complete"
    assert len(results["bad_inputs"]) >= 15
    for row in results["bad_inputs"]:
        assert row["refused"] and row["server_up"], row
    assert results["request_after_bad_inputs"] == "complete"
    assert results["peak_memory_mib"] < 4096


pytestmark = pytest.mark.xdist_group("test_web_server")  # one worker, one server process for the module


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("gradio", reason="the web extra is not installed: pip install -e '.[web]'")
    from minisd.web.client import ServerProcess

    with ServerProcess(["--outputs", str(tmp_path_factory.mktemp("outputs"))]) as running:
        yield running


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_inpainting_over_the_api_returns_the_pngs_and_their_inputs(server, tmp_path, monkeypatch):
    from minisd.web.client import call, file_data, generate_inputs, upload

    digit = Image.new("L", (28, 28), 0)
    digit.paste(255, (10, 4, 18, 24))  # a bar: a "1"
    mask = Image.new("RGBA", (28, 28), (0, 0, 0, 0))
    mask.paste((255, 255, 255, 255), (14, 0, 28, 28))  # paint the right half
    paths = [upload(server.url, _png(picture))[1][0] for picture in (digit, mask)]
    editor = {"background": file_data(paths[0]), "layers": [file_data(paths[1])], "composite": None}
    outcome = call(server.url, "generate", generate_inputs("a handwritten digit 7", steps=4, images=2,
                                                           editor=editor, strength=1.0))
    assert outcome.status == "complete", outcome.message
    files = outcome.data[4]
    names = [Path(entry["path"]).name for entry in files]
    assert names == ["minisd-0-0.png", "minisd-0-1.png", "init-image.png", "mask.png"]
    settings = read_settings(files[0]["path"])
    assert settings["init_image"] == "init-image.png" and settings["mask"] == "mask.png"
    assert settings["strength"] == 1.0 and settings["image_index"] == 0
    with Image.open(files[3]["path"]) as written:
        white = written.convert("L").tobytes()
    assert all(value == 255 for row in range(28) for value in white[row * 28 + 14:row * 28 + 28])
    assert all(value == 0 for row in range(28) for value in white[row * 28:row * 28 + 14])

    # The downloads, side by side in one folder, make the same image again with minisd generate --from.
    for entry in files:
        (tmp_path / Path(entry["path"]).name).write_bytes(Path(entry["path"]).read_bytes())
    monkeypatch.chdir(tmp_path)
    # On one thread, as the server ran (ServerProcess): float sums in another order can move a pixel by 1/255.
    assert main(["generate", "--from", "minisd-0-1.png", "--out", "again.png", "--device", "cpu", "--threads", "1"]) == 0
    with Image.open("again.png") as again, Image.open("minisd-0-1.png") as original:
        assert again.tobytes() == original.tobytes()


def test_draw_as_you_type_is_the_generation_of_generate_under_the_same_checks(server):
    """The hidden button the page presses when typing pauses is an event of its own over the API: the same
    handler (PNGs with their settings) and the same checks."""
    from minisd.web.client import call, generate_inputs

    outcome = call(server.url, "draw_as_you_type", generate_inputs("a handwritten digit 2", model="mnist-fast",
                                                                   sampler="euler", steps=4, guidance=1.0, images=4))
    assert outcome.status == "complete", outcome.message
    settings = read_settings(outcome.data[4][0]["path"])
    assert (settings["model"], settings["steps"], settings["guidance_scale"]) == ("mnist-fast", 4, 1.0)
    refused = call(server.url, "draw_as_you_type", generate_inputs("a handwritten digit 2", model="mnist-fast",
                                                                   steps=10_000))
    assert refused.status == "error" and "greater than maximum value" in refused.message


def test_an_open_host_is_warned_about(tmp_path):
    pytest.importorskip("gradio", reason="the web extra is not installed: pip install -e '.[web]'")
    from minisd.web.client import ServerProcess

    with ServerProcess(["--host", "0.0.0.0", "--outputs", str(tmp_path)]) as server:
        log = "".join(server.log)
    assert "WARNING: listening on 0.0.0.0" in log


def test_each_refused_request_is_one_line_of_the_server_log_without_a_traceback(server):
    """Refusals by Gradio's widgets (a slider's range, a dropdown's choices, a file that is no image, too few
    values) and by the page's own checks (an empty prompt) each log one line, and no traceback."""
    import time

    from minisd.web.client import call, file_data, generate_inputs, upload

    _, paths = upload(server.url, b"this is not an image", "text.png")
    bad = [generate_inputs("   "), generate_inputs("a handwritten digit 7", steps=10**6),
           generate_inputs("a handwritten digit 7", model="../../etc/passwd"),
           generate_inputs("a handwritten digit 7")[:5],
           generate_inputs("a handwritten digit 7", editor={"background": file_data(paths[0]), "layers": [],
                                                            "composite": None})]
    start = len(server.log)
    for inputs in bad:
        assert call(server.url, "generate", inputs).status == "error"
    deadline = time.monotonic() + 10  # the log is read by another thread
    while time.monotonic() < deadline and sum("refused" in line for line in server.log[start:]) < len(bad):
        time.sleep(0.1)
    log = server.log[start:]
    assert "Traceback" not in "".join(log), "".join(log)
    refusals = [line for line in log if line.startswith("minisd serve: refused: ")]
    assert len(refusals) == len(bad) and len(log) == len(bad), "".join(log)
    assert "the prompt is empty" in refusals[0] and "maximum value 100" in refusals[1]
