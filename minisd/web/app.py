"""``minisd serve``: the page, built with Gradio (the optional extra ``web``) around :class:`Studio`.

Tabs: text-to-image (live x0 previews, per-token attention maps, image-to-image and inpainting, PNG downloads
with their settings), the VAE's 2-d latent plane, and a diffusion model's noising and denoising over t.

Safe by default: it listens on 127.0.0.1 only; every value is checked on the server (:mod:`minisd.web.limits`);
uploads larger than the limit are refused by the upload route itself; one model call runs at a time, a bounded
queue holds the next ones (each waiting user sees their place), and past it a request is answered at once with
Gradio's "Queue is full" (busy). The page never takes a path from the browser: models are chosen by the names
this server offers, and uploads arrive as images.
"""

import functools
import logging
import os
import sys
from pathlib import Path
from typing import Any

from minisd.errors import MinisdError
from minisd.web.limits import LATENT_EXTENT
from minisd.web.studio import PAGE_SAMPLERS, Studio, latent_point

LOOPBACK = ("127.0.0.1", "localhost", "::1")
HEAVY = "model"  # the concurrency group of everything that runs a diffusion model: one at a time
log = logging.getLogger("minisd.web")
# Model images are 28 or 32 pixels: shown large, each pixel stays a sharp square.
CSS = "#gallery img, #attention img, #preview img, #decoded img, #plane img, #noised img, #denoised img " \
      "{image-rendering: pixelated;} .minisd-hidden {display: none !important;}"
# A model drawing in at most this many steps draws as the prompt is typed (its "Draw as you type" starts on).
LIVE_MAX_STEPS = 4
# Draw as you type, debounced in the browser: each keystroke restarts a timer, and only when the typing pauses for
# LIVE_PAUSE_MS does the page press its hidden draw button. Keystrokes send nothing to the server, and a pause
# while a drawing runs queues at most one more (the button's trigger_mode "always_last"), in the page's one queue.
LIVE_PAUSE_MS = 300
DRAW_ON_PAUSE = f"""
(prompt, live) => {{
  clearTimeout(window.minisdLiveTimer);
  if (live && prompt.trim()) {{
    window.minisdLiveTimer = setTimeout(() => document.querySelector('#live-draw').click(), {LIVE_PAUSE_MS});
  }}
  return [prompt, live];
}}
"""

INTRO = """# minisd: watch a prompt become a picture
Type a prompt and press **Generate**: the picture on the right is the model's estimate of the clean image (x0)
after each denoising step. A few-step model (`mnist-fast`) draws as you type. Every PNG you download carries its settings: `minisd generate --from FILE.png` makes
it again. The other tabs show two earlier chapters of the path: the VAE's latent plane and a diffusion model's
noising over t."""


def import_gradio():
    try:
        import gradio
    except ImportError:
        raise MinisdError("minisd serve needs the optional web extra: pip install 'minisd[web]' (Gradio)") from None
    return gradio


def _editor_inputs(editor: Any) -> tuple[Any, Any]:
    """(init image, mask) from the image editor's value: the uploaded background, and white where the user
    painted on any layer (None when nothing was painted: plain image-to-image)."""
    if not editor or editor.get("background") is None:
        return None, None
    from PIL import ImageChops

    background = editor["background"]
    masks = [layer.convert("RGBA").getchannel("A").point(lambda a: 255 if a > 0 else 0)
             for layer in editor.get("layers") or [] if layer is not None]
    odd = [mask for mask in masks if mask.size != background.size]
    if odd:
        return background, odd[0]  # Studio.request refuses it, naming both sizes
    painted = functools.reduce(ImageChops.lighter, masks) if masks else None
    if painted is not None and painted.getbbox() is None:
        painted = None
    return background, painted


def refusal(message: str) -> Exception:
    """The page's answer to a request it refuses: ``message`` shown to the user, and one line in the server's log
    (Gradio would print the whole traceback of each one: a log of refusals should read as a list)."""
    gr = import_gradio()
    log.warning("refused: %s", " ".join(message.split()))
    return gr.Error(message, print_exception=False)


def _refuse_quietly(page: Any) -> None:
    """Gradio checks each value against its widget (a slider's range, a dropdown's choices, an upload's path)
    before a handler runs, and prints the traceback of each value it refuses. Its check, in ``preprocess_data``,
    is wrapped here so that such a refusal is one line of the log too, with Gradio's own message to the user."""
    gr = import_gradio()
    check = page.preprocess_data

    @functools.wraps(check)
    async def preprocess_data(*args: Any, **kwargs: Any) -> Any:
        try:
            return await check(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - every value Gradio refuses is a refused request
            raise refusal(err.message if isinstance(err, gr.Error) else str(err)) from None

    page.preprocess_data = preprocess_data


def _is_few_step(model: Any) -> bool:
    """Whether a model draws in so few steps by default that it can draw as the prompt is typed."""
    return model.sample_steps <= LIVE_MAX_STEPS


def build_page(studio: Studio):
    """The Gradio Blocks of the page (not launched)."""
    gr = import_gradio()
    limits = studio.limits
    default = studio.pipeline(studio.model_names[0]).model

    def refused(err: Exception) -> Exception:
        if isinstance(err, MinisdError):
            return refusal(str(err))
        log.exception("a request failed")
        return gr.Error(f"the server could not do this ({type(err).__name__}); it goes on serving", print_exception=False)

    def answered(handler):
        """``handler`` with every failure turned into the page's error message (the server goes on)."""
        @functools.wraps(handler)
        def wrapper(*args):
            try:
                return handler(*args)
            except Exception as err:  # noqa: BLE001
                raise refused(err) from None
        return wrapper

    with gr.Blocks(title="minisd", analytics_enabled=False, delete_cache=(3600, 3600)) as page:
        gr.Markdown(INTRO)
        last_image = gr.State(None)
        with gr.Tab("Text to image", id="text-to-image"):
            with gr.Row():
                with gr.Column(scale=1):
                    prompt = gr.Textbox(label="Prompt", elem_id="prompt", lines=2, max_length=limits.max_prompt_chars,
                                        placeholder="a handwritten digit 7")
                    negative = gr.Textbox(label="Negative prompt (what to steer away from)", elem_id="negative",
                                          max_length=limits.max_prompt_chars)
                    model = gr.Dropdown(studio.model_names, value=studio.model_names[0], label="Model",
                                        elem_id="model")
                    with gr.Row():
                        sampler = gr.Dropdown(list(PAGE_SAMPLERS), label="Sampler", elem_id="sampler",
                                              value=default.sampler if default.sampler in PAGE_SAMPLERS else
                                              PAGE_SAMPLERS[0])
                        steps = gr.Slider(1, limits.max_steps, value=min(default.sample_steps, limits.max_steps),
                                          step=1, label="Steps", elem_id="steps")
                    with gr.Row():
                        guidance = gr.Slider(0, limits.max_guidance, value=default.guidance_scale, step=0.5,
                                             label="Guidance scale", elem_id="guidance")
                        count = gr.Slider(1, limits.max_images, value=min(4, limits.max_images), step=1,
                                          label="Images", elem_id="count")
                    with gr.Row():
                        seed = gr.Number(0, precision=0, label="Seed (the same seed gives the same image)",
                                         elem_id="seed", minimum=0)
                        random_seed = gr.Checkbox(False, label="Random seed (drawn, then shown)", elem_id="random-seed")
                    with gr.Accordion("Image-to-image and inpainting", open=False):
                        gr.Markdown("Upload an image to redraw it from the prompt (it is cropped to a square and "
                                    "resized to the model's size); paint over a part of it to redraw only that "
                                    "part (inpainting; strength 1 repaints it fully).")
                        editor = gr.ImageEditor(type="pil", format="png", image_mode="RGBA", sources=["upload"],
                                                label="Init image and mask", elem_id="editor", layers=False,
                                                brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"))
                        strength = gr.Slider(0.05, 1, value=0.8, step=0.05, label="Strength (how much to redraw)",
                                             elem_id="strength")
                    live = gr.Checkbox(_is_few_step(default), label=f"Draw as you type (models of at most "
                                       f"{LIVE_MAX_STEPS} steps start with it on)", elem_id="live")
                    go = gr.Button("Generate", variant="primary", elem_id="generate")
                    # Pressed by the page itself when the typing pauses (DRAW_ON_PAUSE): never shown.
                    live_draw = gr.Button("Draw", elem_id="live-draw", elem_classes=["minisd-hidden"])
                with gr.Column(scale=1):
                    status = gr.Markdown("", elem_id="status")
                    # Shown when another model this server offers knows the prompt's words that this one never read.
                    switch = gr.Button("", visible=False, elem_id="switch-model", size="sm")
                    suggestion = gr.State(None)
                    preview = gr.Image(label="Denoising: the x0 estimate after each step", elem_id="preview",
                                       format="png", interactive=False, height=300)
                    gallery = gr.Gallery(label="Images", elem_id="gallery", format="png", columns=4, height=260,
                                         interactive=False)
                    files = gr.File(label="PNG files (with their settings inside)", file_count="multiple",
                                    elem_id="files", interactive=False)
                    attention = gr.Gallery(label="Cross-attention of each prompt token (first image, averaged over "
                                                 "steps, heads and layers)", elem_id="attention", columns=6,
                                           height=220, format="png", interactive=False)
                    settings = gr.JSON(label="Settings", elem_id="settings")

            def generate(prompt_text, negative_text, model_name, sampler_name, step_count, scale, seed_value,
                         draw_seed, image_count, editor_value, strength_value):
                try:
                    init_image, mask = _editor_inputs(editor_value)
                    request = studio.request(prompt=prompt_text, model=model_name, negative_prompt=negative_text,
                                             sampler=sampler_name, steps=step_count, guidance_scale=scale,
                                             seed=None if draw_seed else seed_value, num_images=image_count,
                                             init_image=init_image, mask=mask,
                                             strength=strength_value if init_image is not None else None)
                    notes = "".join(f"  \nnote: {note}" for note in request.notes)
                    suggested = request.suggested_model
                    yield {seed: request.seed, status: f"seed {request.seed}: starting{notes}", suggestion: suggested,
                           switch: gr.Button(f"Switch to the {suggested} model" if suggested else "",
                                             visible=suggested is not None)}
                    for event in studio.generate(request):
                        if "done" in event:
                            result = event["done"]
                            paths = [str(p) for p in result.files]
                            yield {gallery: paths, files: paths + [str(p) for p in result.inputs],
                                   attention: result.attention, settings: result.settings, last_image: paths[0],
                                   status: f"done: {len(paths)} image(s), seed {request.seed}{notes}"}
                        else:
                            yield {preview: event["preview"],
                                   status: f"step {event['step']} of {event['steps']} (t = {event['t']:.3f}){notes}"}
                except Exception as err:  # noqa: BLE001 - every failure becomes a message; the server goes on
                    raise refused(err) from None

            inputs = [prompt, negative, model, sampler, steps, guidance, seed, random_seed, count, editor, strength]
            outputs = [seed, status, preview, gallery, files, attention, settings, last_image, switch, suggestion]
            go.click(generate, inputs, outputs, api_name="generate", concurrency_id=HEAVY, concurrency_limit=1)
            # The same generation, in the same queue and concurrency group; a pause while one runs waits as one.
            live_draw.click(generate, inputs, outputs, api_name="draw_as_you_type", concurrency_id=HEAVY,
                            concurrency_limit=1, trigger_mode="always_last", show_progress="hidden")
            prompt.input(None, [prompt, live], None, js=DRAW_ON_PAUSE, queue=False)

            @answered
            def model_defaults(name):
                """A chosen model's own sampler, steps and guidance, and draw-as-you-type for a few-step one."""
                chosen = studio.pipeline(name).model
                return (gr.Dropdown(value=chosen.sampler if chosen.sampler in PAGE_SAMPLERS else PAGE_SAMPLERS[0]),
                        gr.Slider(value=min(chosen.sample_steps, limits.max_steps)),
                        gr.Slider(value=min(chosen.guidance_scale, limits.max_guidance)),
                        gr.Checkbox(value=_is_few_step(chosen)))

            model.change(model_defaults, model, [sampler, steps, guidance, live], api_name=False, queue=False)
            switch.click(lambda name: (gr.Dropdown(value=name), gr.Button(visible=False)), suggestion,
                         [model, switch], api_name=False, queue=False)

        with gr.Tab("VAE latent plane", id="vae"):
            gr.Markdown("The chapter-2 VAE squeezes each 28x28 digit into two numbers, z[0] and z[1]. The map "
                        "shows the digit decoded at each point of the plane from -3 to 3; click it, or move the "
                        "sliders, to decode any point.")
            if studio.vae_path is None:
                gr.Markdown("*This server has no 2-d VAE: start it with `--vae RUN`, a run of "
                            "`minisd train --config vae2d`.*")
            else:
                plane_picture = studio.latent_plane()
                with gr.Row():
                    plane = gr.Image(plane_picture, label="The latent plane (click a point)",
                                     elem_id="plane", interactive=False, format="png")
                    with gr.Column():
                        z0 = gr.Slider(-LATENT_EXTENT, LATENT_EXTENT, value=0, step=0.05, label="z[0]", elem_id="z0")
                        z1 = gr.Slider(-LATENT_EXTENT, LATENT_EXTENT, value=0, step=0.05, label="z[1]", elem_id="z1")
                        decoded = gr.Image(studio.decode_latent(0, 0), label="Decoded", elem_id="decoded",
                                           interactive=False, format="png")

                decode = answered(studio.decode_latent)

                def clicked(event: gr.SelectData):
                    return latent_point(*event.index, plane_picture.size)

                plane.select(clicked, None, [z0, z1], api_name=False).then(decode, [z0, z1], decoded,
                                                                         api_name=False)
                z0.release(decode, [z0, z1], decoded, api_name="decode_latent")
                z1.release(decode, [z0, z1], decoded, api_name=False)

        with gr.Tab("Diffusion: noising and denoising", id="noising"):
            gr.Markdown("Diffusion destroys an image step by step, x_t = alpha_t x + sigma_t eps, and learns to "
                        "undo it. Top: the image noised to eight times t (in the model's latent space, then "
                        "decoded). Bottom: what the model recovers from each in one step, its x0 estimate given the "
                        "prompt. Uses the last generated image unless you upload one.")
            with gr.Row():
                source = gr.Image(type="pil", format="png", sources=["upload"], label="Image (optional)",
                                  elem_id="noise-source", height=200)
                with gr.Column():
                    noise_prompt = gr.Textbox(label="Prompt given to the model", elem_id="noise-prompt",
                                              max_length=limits.max_prompt_chars)
                    noise_go = gr.Button("Noise and denoise", elem_id="noise-go")
            noised = gr.Gallery(label="x_t", columns=8, height=180, elem_id="noised", format="png",
                                interactive=False)
            denoised = gr.Gallery(label="the model's x0 estimate from x_t", columns=8, height=180,
                                  elem_id="denoised", format="png", interactive=False)

            @answered
            def noise_and_denoise(upload, model_name, text, last):
                return studio.noising(upload, model_name, text, image_path=Path(last) if last else None)

            noise_go.click(noise_and_denoise, [source, model, noise_prompt, last_image], [noised, denoised],
                           api_name="noising", concurrency_id=HEAVY)
        # Each visit looks again for models: a run trained since the server started is offered too.
        page.load(lambda: gr.Dropdown(choices=studio.refresh()), None, model, api_name=False, queue=False)
    page.queue(max_size=limits.queue_size, default_concurrency_limit=1)
    _refuse_quietly(page)
    return page


def serve(studio: Studio, *, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """Start the page; returns the Gradio app (with ``block=False``, for tests: close it with ``.close()``)."""
    page = build_page(studio)
    if not log.handlers:  # the server's log: one line per refused request, a traceback only for a failure
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("minisd serve: %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    if host not in LOOPBACK:
        print(f"minisd serve: WARNING: listening on {host}, not only on this machine: anyone who can reach "
              f"port {port} can use this page and its CPU. Use --host 127.0.0.1 unless you mean it.", file=sys.stderr)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    page.launch(server_name=host, server_port=port, max_file_size=studio.limits.max_upload_bytes,
                prevent_thread_lock=True, quiet=True, footer_links=["api"], show_error=True, css=CSS,
                ssr_mode=False, inbrowser=False)
    print(f"minisd serve: http://{'[' + host + ']' if ':' in host else host}:{page.server_port}/  "
          f"(models: {', '.join(studio.model_names)}; Ctrl-C stops)", flush=True)
    if block:
        page.block_thread()
    return page

