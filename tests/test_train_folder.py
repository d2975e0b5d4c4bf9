"""Training a text-to-image model on your own folder of captioned images: ``minisd example-folder`` and
``minisd train --data FOLDER`` (the ``text2image_folder`` preset), resumed, then ``generate`` and ``figures``.

The runs are tiny (a few steps of each part on 16 pictures): the tests check the plumbing, never the pictures.
"""

import json
from pathlib import Path

import pytest
from PIL import Image

from minisd.cli import main
from minisd.data import load_image_folder

TINY = [  # a few steps of each stage, small batches, 2 sampling steps for the figures
    "--no-progress",
    "--set", "autoencoder.train.steps=2", "--set", "text_encoder.train.steps=2", "--set", "unet.train.steps=2",
    "--set", "autoencoder.train.batch_size=8", "--set", "text_encoder.train.batch_size=8",
    "--set", "unet.train.batch_size=8", "--set", "unet.model.sample_steps=2",
]


def make_example(folder: Path, n: int = 16, *extra: str) -> Path:
    assert main(["example-folder", str(folder), "--n", str(n), *extra]) == 0
    return folder


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A tiny run of ``minisd train --data pictures`` (default --out: runs/pictures), made in a temporary folder."""
    import os

    root = tmp_path_factory.mktemp("folder-run")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        make_example(Path("pictures"))
        assert main(["train", "--data", "pictures", *TINY]) == 0
    finally:
        os.chdir(cwd)
    return root


def test_example_folder_writes_n_pictures_and_metadata_that_the_image_folder_reader_reads(tmp_path, capsys):
    folder = make_example(tmp_path / "example", 12)
    printed = capsys.readouterr().out
    assert "wrote 12" in printed and f"minisd train --data {folder}" in printed
    lines = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    assert len(lines) == 12 == len(list(folder.glob("*.png")))
    with Image.open(folder / lines[0]["file_name"]) as image:
        assert image.size == (32, 32) and image.mode == "RGB"
    dataset = load_image_folder(folder, size=32)
    assert tuple(dataset.images.shape) == (12, 3, 32, 32) and not dataset.skipped
    import torch

    assert dataset.captions(torch.arange(12)) == [line["text"] for line in lines]
    assert all(any(colour in line["text"] for colour in ("red", "green", "blue", "yellow", "purple", "violet",
                                                           "white")) for line in lines)
    # The same seed makes the same folder; another seed another one.
    same, other = make_example(tmp_path / "same", 12), make_example(tmp_path / "other", 12, "--seed", "1")
    assert (same / "metadata.jsonl").read_bytes() == (folder / "metadata.jsonl").read_bytes()
    assert (same / "00003.png").read_bytes() == (folder / "00003.png").read_bytes()
    assert (other / "metadata.jsonl").read_bytes() != (folder / "metadata.jsonl").read_bytes()


def test_example_folder_refuses_a_folder_that_is_not_empty_unless_overwrite(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"my own picture")
    assert main(["example-folder", str(folder), "--n", "4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not empty" in err and "--overwrite" in err
    assert sorted(p.name for p in folder.iterdir()) == ["holiday.jpg"]  # nothing written
    assert main(["example-folder", str(folder), "--n", "4", "--overwrite"]) == 0
    assert (folder / "holiday.jpg").read_bytes() == b"my own picture"  # other files are left alone
    assert len((folder / "metadata.jsonl").read_text().splitlines()) == 4
    (tmp_path / "a-file").write_text("x")
    assert main(["example-folder", str(tmp_path / "a-file")]) == 2
    assert "is a file" in capsys.readouterr().err
    # An empty folder is fine, and no temporary folder is left beside it.
    (tmp_path / "empty").mkdir()
    make_example(tmp_path / "empty", 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "empty", "mine"]


def test_train_data_trains_all_three_stages_into_runs_folder_name(folder_run):
    run = folder_run / "runs" / "pictures"
    for stage in ("autoencoder", "text_encoder", "unet"):
        assert json.loads((run / stage / "checkpoint" / "config.json").read_text())["step"] == 2
    index = json.loads((run / "model" / "model_index.json").read_text())
    # No data.image_size: the pictures were read at the folder's own 32x32 RGB.
    assert index["data"]["dataset"] == "pictures" and index["data"]["image_size"] is None
    assert index["model"]["image_shape"] == [3, 32, 32]
    saved = json.loads((run / "text2image.json").read_text())
    assert saved["unet"]["model"]["unet"]["prediction"] == "v"  # the text2image_folder preset
    card = (run / "model" / "README.md").read_text()
    assert "Trained on the folder `pictures`: 16 images with captions, each read at 32x32 RGB." in card
    assert "no test split" in card and "held-out caption templates" not in card
    assert set(json.loads((run / "timings.json").read_text())[0]["seconds"]) == {"autoencoder", "text_encoder", "unet"}


def test_generate_draws_a_32x32_png_from_the_folder_run(folder_run, tmp_path):
    out = tmp_path / "circle.png"
    assert main(["generate", "a red circle", "--model", str(folder_run / "runs" / "pictures"), "--out", str(out),
                 "--steps", "2"]) == 0
    with Image.open(out) as image:
        assert image.size == (32, 32) and image.mode == "RGB"


def test_figures_of_a_folder_model_take_their_prompts_from_the_folders_captions(folder_run, tmp_path, monkeypatch,
                                                                                  capsys):
    from minisd.figures import text_to_image

    drawn = []
    real = text_to_image.prompt_grid_figure
    monkeypatch.setattr(text_to_image, "prompt_grid_figure",
                        lambda pipe, prompts, path, **kw: drawn.append(prompts) or real(pipe, prompts, path, **kw))
    monkeypatch.chdir(folder_run)  # the run names its folder as it was given: relative to where it was trained
    out = tmp_path / "figures"
    assert main(["figures", "text-to-image", "runs/pictures", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["attention.png", "editing.png", "prompt_grid.png"]
    captions = {json.loads(line)["text"] for line in Path("pictures/metadata.jsonl").read_text().splitlines()}
    (prompts,) = drawn
    assert len(prompts) == 8 and set(prompts) <= captions and len(set(prompts)) == 8
    # Where the folder is not found, one line says so.
    monkeypatch.chdir(tmp_path)
    assert main(["figures", "text-to-image", str(folder_run / "runs" / "pictures"), "--out", str(tmp_path / "f2")]) == 2
    assert "not found here" in capsys.readouterr().err


def test_folder_prompts_prefer_short_captions_that_say_something_new(tmp_path):
    from minisd.figures.text_to_image import folder_prompts

    captions = ["a big red circle on the left", "a red circle", "a blue square", "a red circle", "a blue circle",
                "a green triangle"]
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f"{i}.png", "text": text}) + "\n"
                                                     for i, text in enumerate(captions)))
    assert folder_prompts(tmp_path, 4) == ["a red circle", "a blue square", "a green triangle",
                                           "a big red circle on the left"]
    assert folder_prompts(tmp_path, 5)[-1] == "a blue circle"  # then the rest, shortest first


def _stop_the_unet_after(step: int, monkeypatch):
    """Ctrl-C in the UNet stage, just after its checkpoint of ``step`` is written."""
    from minisd.train import loop

    real = loop.save_checkpoint

    def save_then_stop(run_dir, **kwargs):
        real(run_dir, **kwargs)
        if Path(run_dir).name == "unet" and kwargs["step"] == step:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint", save_then_stop)


def test_a_stopped_folder_run_resumes_where_it_stopped_and_can_train_longer(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    make_example(Path("2024"))  # a name TOML would read as a number: --data passes it as a string
    _stop_the_unet_after(2, monkeypatch)
    assert main(["train", "--data", "2024", *TINY, "--set", "unet.train.steps=4",
                 "--set", "unet.train.checkpoint_every=1"]) == 130
    assert "--resume" in capsys.readouterr().err
    run = Path("runs/2024")
    assert json.loads((run / "unet/checkpoint/config.json").read_text())["step"] == 2
    assert not (run / "model").exists()
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    # The same command again, without --resume, is refused and names --resume.
    assert main(["train", "--data", "2024", *TINY]) == 2
    assert "--resume" in capsys.readouterr().err
    kept = (run / "autoencoder/checkpoint/config.json").read_bytes()
    assert main(["train", "--data", "2024", "--resume", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "autoencoder: already trained, kept" in printed and "text_encoder: already trained, kept" in printed
    assert json.loads((run / "unet/checkpoint/config.json").read_text())["step"] == 4
    assert (run / "autoencoder/checkpoint/config.json").read_bytes() == kept
    assert (run / "model/model_index.json").is_file()
    # A finished run trains longer: more UNet steps, from where it ended.
    assert main(["train", "--data", "2024", "--resume", "--no-progress", "--set", "unet.train.steps=5"]) == 0
    assert json.loads((run / "unet/checkpoint/config.json").read_text())["step"] == 5
    assert len(json.loads((run / "timings.json").read_text())) == 3


def _no_captions(folder: Path) -> None:
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "a.png")


def _no_images(folder: Path) -> None:
    folder.mkdir()
    (folder / "notes.md").write_text("hello")


def _unreadable_images(folder: Path) -> None:
    folder.mkdir()
    (folder / "a.png").write_bytes(b"not a png")
    (folder / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "a cat"}\n')


@pytest.mark.parametrize(("make", "message"), [
    (None, "no such folder"),
    (Path.mkdir, "the folder is empty"),
    (_no_images, "no images"),
    (_no_captions, "have no captions"),
    (lambda folder: folder.write_text("x"), "a file, not a folder"),
    (_unreadable_images, "no usable image with a caption"),
])
def test_a_bad_folder_is_one_line_error_and_leaves_no_run_behind(tmp_path, monkeypatch, capsys, make, message):
    monkeypatch.chdir(tmp_path)
    if make is not None:
        make(Path("pictures"))
    assert main(["train", "--data", "pictures", *TINY]) == 2
    err = capsys.readouterr().err
    assert message in err and err.splitlines()[-1].startswith("minisd: error:")
    assert "Traceback" not in err
    assert not Path("runs/pictures").exists()


def test_a_run_folder_that_would_hold_the_images_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    make_example(Path("runs/pictures"), 4)  # runs/<folder name> is the folder itself
    assert "--out runs/pictures-model" in capsys.readouterr().out  # the next command it prints avoids that
    for out in ([], ["--out", "runs"], ["--out", "runs", "--overwrite"]):
        assert main(["train", "--data", "runs/pictures", *TINY, *out]) == 2
        err = capsys.readouterr().err
        assert "would hold the images" in err and "--out runs/pictures-model" in err
    assert len(list(Path("runs/pictures").glob("*.png"))) == 4 and sorted(p.name for p in Path("runs").iterdir()) \
        == ["pictures"]


def grey_garments(folder: Path, n: int = 8) -> Path:
    """A folder like Fashion-MNIST's: 28x28 grey ("L") pictures with a caption in a .txt beside each."""
    folder.mkdir()
    for i in range(n):
        picture = Image.new("L", (28, 28), 0)
        picture.paste(60 + 20 * i, (6, 4 + i, 22, 24))
        picture.save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"a {'light' if i % 2 else 'dark'} shirt")
    return folder


def test_a_folder_of_28x28_grey_pictures_is_read_at_28x28_grey_unless_told_otherwise(tmp_path, capsys):
    folder = grey_garments(tmp_path / "garments")
    dataset = load_image_folder(folder)
    assert tuple(dataset.images.shape) == (8, 1, 28, 28)
    assert "at 28x28 grey (the folder's own)" in capsys.readouterr().err
    bigger = load_image_folder(folder, size=32, channels=3)
    assert tuple(bigger.images.shape) == (8, 3, 32, 32)
    assert "at 32x32 RGB (as asked)" in capsys.readouterr().err
    assert tuple(load_image_folder(folder, size=14).images.shape) == (8, 1, 14, 14)
    assert "at 14x14 grey (size as asked, colour from the folder)" in capsys.readouterr().err


def test_one_colour_picture_makes_the_folder_rgb_and_the_most_common_side_wins(tmp_path):
    folder = grey_garments(tmp_path / "mixed", 3)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(folder / "3.png")  # shorter side 30: one picture of four
    (folder / "3.txt").write_text("a red shirt")
    assert tuple(load_image_folder(folder).images.shape) == (4, 3, 28, 28)


def test_train_on_a_grey_folder_gives_models_of_grey_28x28_pictures_and_image_size_overrides(tmp_path, capsys):
    from minisd.train.run import load_captioned_split

    folder = grey_garments(tmp_path / "garments", 16)
    data = {"dataset": str(folder), "num_images": None, "image_size": None}
    assert load_captioned_split(data, "train", None).example_shape == (1, 28, 28)
    assert load_captioned_split({**data, "image_size": 32}, "test", None).example_shape == (1, 32, 32)
    assert load_captioned_split({**data, "channels": 3}, "test", None).example_shape == (3, 28, 28)
    run = tmp_path / "run"
    assert main(["train", "--data", str(folder), "--out", str(run), *TINY]) == 0
    assert "at 28x28 grey (the folder's own)" in capsys.readouterr().err
    index = json.loads((run / "model" / "model_index.json").read_text())
    autoencoder = json.loads((run / "model" / "autoencoder" / "config.json").read_text())
    assert index["model"]["image_shape"] == [1, 28, 28], index["model"]
    assert json.dumps(autoencoder).count("[1, 28, 28]") >= 1
    assert main(["train", "--data", str(folder), "--out", str(tmp_path / "refused"), "--set", "data.channels=2"]) == 2
    assert "data.channels must be 1 (grey) or 3 (RGB), got 2" in capsys.readouterr().err
    assert main(["train", "--config", "text2image_mnist", "--out", str(tmp_path / "mnist"),
                 "--set", "data.channels=3"]) == 2
    assert "data.channels chooses grey or RGB for a folder of your images; mnist has its own" in capsys.readouterr().err
