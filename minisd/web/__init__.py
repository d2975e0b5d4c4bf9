"""The local web page (``minisd serve``): :mod:`limits` checks what the browser sends, :mod:`studio` does the
work (models by name, generations as streams of steps, PNGs with settings, the chapter pictures),
:mod:`pictures` draws for the page, and :mod:`app` is the Gradio page itself (the optional extra ``web``)."""
