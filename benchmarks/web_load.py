"""Load and bad input against one ``minisd serve`` on loopback (needs the web extra).

    python benchmarks/web_load.py                      # 20 concurrent requests, 20 steps, 4 images each
    python benchmarks/web_load.py --requests 20 --steps 2 --json load.json

1. Starts ``minisd serve`` (its defaults: one model call at a time, a queue of 8) as a child process.
2. Sends ``--requests`` generation requests at once, each from its own thread through the HTTP API, and counts
   how each ends: completed, refused as busy (the queue was full), or failed (anything else: must be 0).
   The server's resident memory is sampled throughout; its peak (VmHWM) is reported.
3. Checks that the server still answers, and that one more request completes.
4. Sends each bad input of :data:`BAD_INPUTS` through the same API (and the upload route), and checks that each
   gets an error that names the problem, and that the server still generates afterwards.
Prints a table and, with ``--json``, writes every figure.
"""

import argparse
import concurrent.futures
import io
import json
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from tempfile import TemporaryDirectory

from PIL import Image

from minisd.web.client import ServerProcess, call, file_data, generate_inputs, upload
from minisd.web.limits import Limits

LIMITS = Limits()  # the server's defaults


def _png(size: tuple[int, int], colour: int | tuple = 0, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _editor(url: str, background: bytes, layer: bytes | None = None) -> dict:
    status, paths = upload(url, background, "image.png")
    assert status == 200, (status, paths)
    layers = []
    if layer is not None:
        status, layer_paths = upload(url, layer, "layer.png")
        assert status == 200, (status, layer_paths)
        layers = [file_data(layer_paths[0])]
    return {"background": file_data(paths[0]), "layers": layers, "composite": None}


# (name, what the message must say, inputs of the generate call: a function of the server's URL)
BAD_INPUTS = [
    ("over-long prompt", "characters long", lambda url: generate_inputs("a" * (LIMITS.max_prompt_chars + 1))),
    ("empty prompt", "empty", lambda url: generate_inputs("   ")),
    ("steps 0", "minimum", lambda url: generate_inputs("a handwritten digit 7", steps=0)),
    ("steps 10^6", "maximum", lambda url: generate_inputs("a handwritten digit 7", steps=10**6)),
    ("steps 2.5", "whole number", lambda url: generate_inputs("a handwritten digit 7", steps=2.5)),
    ("steps as text", "slider", lambda url: generate_inputs("a handwritten digit 7", steps="many")),
    ("NaN guidance", "guidance scale", lambda url: generate_inputs("a handwritten digit 7", guidance=float("nan"))),
    ("infinite guidance", "inf",
     lambda url: generate_inputs("a handwritten digit 7", guidance=float("inf"))),
    ("1000 images", "maximum", lambda url: generate_inputs("a handwritten digit 7", images=1000)),
    ("seed -1", "minimum", lambda url: generate_inputs("a handwritten digit 7", seed=-1)),
    ("model given as a path", "not in the list of choices",
     lambda url: generate_inputs("a handwritten digit 7", model="../../etc/passwd")),
    ("unknown sampler", "not in the list of choices",
     lambda url: generate_inputs("a handwritten digit 7", sampler="rm -rf")),
    ("a server path as the init image", "not uploaded",
     lambda url: generate_inputs("a handwritten digit 7", editor={"background": file_data("/etc/passwd"),
                                                                  "layers": [], "composite": None})),
    ("non-image upload", "cannot identify image",
     lambda url: generate_inputs("a handwritten digit 7", editor=_editor(url, b"this is not an image"))),
    ("image of too many pixels", "pixels",
     lambda url: generate_inputs("a handwritten digit 7", editor=_editor(url, _png((4000, 4000))))),
    ("mask of the wrong size", "the mask is 10x10",
     lambda url: generate_inputs("a handwritten digit 7", editor=_editor(url, _png((28, 28)),
                                                                         _png((10, 10), (255, 255, 255, 255),
                                                                              "RGBA")))),
    ("too few inputs", "input values", lambda url: generate_inputs("a handwritten digit 7")[:5]),
]


def load_test(url: str, requests: int, steps: int, images: int) -> dict:
    """``requests`` generations sent at once; how each ended and how long it took."""
    def one(index: int) -> tuple[str, float, str]:
        start = time.perf_counter()
        outcome = call(url, "generate", generate_inputs("a handwritten digit 7", steps=steps, images=images,
                                                        seed=index))
        return outcome.status, time.perf_counter() - start, outcome.message

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(requests) as pool:
        results = list(pool.map(one, range(requests)))
    counts = Counter(status for status, _, _ in results)
    completed = [seconds for status, seconds, _ in results if status == "complete"]
    return {"sent": requests, "completed": counts["complete"], "busy": counts["busy"], "failed": counts["error"],
            "failures": [message for status, _, message in results if status == "error"],
            "busy_message": next((message for status, _, message in results if status == "busy"), None),
            "wall_s": time.perf_counter() - start,
            "slowest_completed_s": max(completed, default=0.0)}


def _short(message: str) -> str:
    """One line of a message; of Gradio's "Could not preprocess ..." the component and the original error."""
    if "Original error:" in message:
        message = message.split(" of the event handler")[0] + ": " + message.split("Original error:")[1]
    return " ".join(message.split())[:170]


def bad_input_test(server: ServerProcess) -> list[dict]:
    rows = []
    status, message = upload(server.url, b"\0" * (LIMITS.max_upload_bytes + 1), "big.png")
    rows.append({"input": "upload over the size limit", "refused": status == 413,
                 "message": _short(str(message)), "server_up": server.alive})
    for name, expected, inputs in BAD_INPUTS:
        outcome = call(server.url, "generate", inputs(server.url))
        rows.append({"input": name, "refused": outcome.status == "error" and expected in outcome.message,
                     "message": _short(outcome.message), "server_up": server.alive})
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20, help="concurrent generation requests (default 20)")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps per request (default 20)")
    parser.add_argument("--images", type=int, default=4, help="images per request (default 4)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the server (default 2)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    with TemporaryDirectory() as outputs, ServerProcess(["--outputs", outputs], threads=args.threads) as server:
        start = time.perf_counter()
        first = call(server.url, "generate", generate_inputs("a handwritten digit 7", steps=args.steps,
                                                             images=args.images))
        first_s = time.perf_counter() - start
        peak_before = server.peak_memory_mib()
        samples, done = [], threading.Event()

        def sample_memory() -> None:
            while not done.wait(0.2):
                samples.append(server.peak_memory_mib())

        sampler = threading.Thread(target=sample_memory, daemon=True)
        sampler.start()
        load = load_test(server.url, args.requests, args.steps, args.images)
        done.set()
        sampler.join()
        after = call(server.url, "generate", generate_inputs("a handwritten digit 7", steps=args.steps, seed=99))
        results = {"requests": args.requests, "steps": args.steps, "images_per_request": args.images,
                   "first_request": first.status, "first_request_s": first_s, **load,
                   "peak_memory_mib_before_load": peak_before, "peak_memory_mib": server.peak_memory_mib(),
                   "server_up_after_load": server.alive, "later_request": after.status,
                   "bad_inputs": bad_input_test(server)}
        last = call(server.url, "generate", generate_inputs("a handwritten digit 7", steps=args.steps, seed=100))
        results["request_after_bad_inputs"] = last.status
    print(f"{results['sent']} concurrent requests ({args.steps} steps, {args.images} images each): "
          f"{results['completed']} completed, {results['busy']} refused as busy, {results['failed']} failed, "
          f"in {results['wall_s']:.1f} s (the last completed after {results['slowest_completed_s']:.1f} s); peak memory {results['peak_memory_mib']:.0f} MiB "
          f"({results['peak_memory_mib_before_load']:.0f} MiB after the first request); "
          f"server up: {results['server_up_after_load']}, a later request: {results['later_request']}")
    if results["busy_message"]:
        print(f"busy answer: {results['busy_message']!r}")
    for message in results["failures"]:
        print(f"FAILED: {message}")
    print("\n| bad input | refused with a clear message | server up after | message |\n|---|---|---|---|")
    for row in results["bad_inputs"]:
        print(f"| {row['input']} | {'yes' if row['refused'] else 'NO'} | {'yes' if row['server_up'] else 'NO'} | "
              f"{row['message'].replace('|', '/')} |")
    print(f"\na request after the bad inputs: {results['request_after_bad_inputs']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    outcome = main()
    healthy = (outcome["failed"] == 0 and outcome["later_request"] == "complete"
               and outcome["request_after_bad_inputs"] == "complete"
               and all(row["refused"] and row["server_up"] for row in outcome["bad_inputs"]))
    sys.exit(0 if healthy else 1)
