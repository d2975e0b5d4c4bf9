"""Prompt adherence (minisd.eval.adherence), the attribute classifier, and `minisd eval` of a text-to-image model.

The scoring is checked exactly on hand-made cases: true images with their own prompts and an oracle
that answers the truth score 1.0, and each corrupted answer lowers exactly the accuracy it belongs to.
The tiny text-to-image run of :mod:`t2i_fixtures` and a 3-step attribute classifier check the plumbing
end to end (keys, ranges, counts, the command line), never the quality of the images.
"""

import json
import math
from types import SimpleNamespace

import pytest
import torch

import minisd
from minisd.cli import main
from minisd.data.attributes import digit_attribute_bins
from minisd.data.captions import DIGIT_ATTRIBUTE_WORDS, parse_digit_prompt
from minisd.data.dataset import load_dataset
from minisd.data.shapes import COLOURS, POSITIONS, RELATIONS, SHAPES, make_shapes, shapes_prompt
from minisd.eval.adherence import (_call_plan, digit_adherence, digit_prompts, evaluate_digits, evaluate_shapes,
                                   generate_for_prompts, shapes_adherence, shapes_prompt_targets, shapes_prompts)
from minisd.models.attribute_classifier import HEAD_CLASSES, AttributeClassifier, canonical_targets
from t2i_fixtures import text_to_image_run  # noqa: F401  (a fixture)

TINY_ATTRIBUTE_CLASSIFIER = ["--config", "attributes_shapes", "--no-progress", "--set", "data.num_images=64",
                             "--set", "train.steps=3", "--set", "train.batch_size=16", "--set", "train.warmup_steps=1",
                             "--set", "train.eval_every=0", "--set", "train.checkpoint_every=3"]


# One worker takes the whole module, so that the module's classifier (about 11 s) is trained once (make test runs
# two pytest-xdist workers with --dist loadgroup).
pytestmark = pytest.mark.xdist_group("test_adherence")


@pytest.fixture(scope="module")
def attribute_classifier_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("adherence") / "attributes"
    assert main(["train", *TINY_ATTRIBUTE_CLASSIFIER, "--out", str(run)]) == 0
    return run


def object_list(attributes: dict, index: int, say_size: bool = True) -> list[dict]:
    """The objects of make_shapes image ``index``, as shapes_prompt takes them (every attribute said)."""
    count = attributes["num_objects"][index].item()
    objects = [{key: attributes[key][index, slot].item() for key in ("shape", "colour", "size", "position")}
               for slot in range(count)]
    objects[0]["relation"] = attributes["relation"][index].item() if count == 2 else None
    if not say_size:
        objects[0]["size"] = None
    return objects


# ------------------------------------------------------------------ the attribute classifier


def test_canonical_slot_0_is_the_left_or_top_object_of_every_pair():
    data = make_shapes(400, seed=3)
    targets = canonical_targets(data.attributes)
    pair = data.attributes["num_objects"] == 2
    relation = data.attributes["relation"]
    swapped = pair & ((relation == RELATIONS.index("right of")) | (relation == RELATIONS.index("below")))
    centre = data.attributes["centre"]  # (N, object, xy) in caption order
    slot_0 = torch.where(swapped.view(-1, 1), centre[:, 1], centre[:, 0])
    slot_1 = torch.where(swapped.view(-1, 1), centre[:, 0], centre[:, 1])
    side_by_side = pair & (targets["layout"] == 0)
    stacked = pair & (targets["layout"] == 1)
    assert side_by_side.any() and stacked.any() and swapped.any()
    assert (slot_0[side_by_side, 0] < slot_1[side_by_side, 0]).all()
    assert (slot_0[stacked, 1] < slot_1[stacked, 1]).all()  # y grows downwards: above is smaller
    shape_of_slot_0 = torch.where(swapped, data.attributes["shape"][:, 1], data.attributes["shape"][:, 0])
    assert torch.equal(targets["shape_0"][pair], shape_of_slot_0[pair])
    none = {head: len(classes) - 1 for head, classes in HEAD_CLASSES.items()}
    assert (targets["shape_1"][~pair] == none["shape_1"]).all() and (targets["layout"][~pair] == none["layout"]).all()
    assert (targets["position"][pair] == none["position"]).all()


def test_attribute_classifier_loss_reads_the_batch_attributes_and_logs_every_head():
    data = make_shapes(8, seed=0)
    model = AttributeClassifier(channels=[8, 8, 8], hidden=16)
    loss, logs = model.loss(data.batch(torch.arange(8)))
    loss.backward()
    assert torch.isfinite(loss) and {f"accuracy_{head}" for head in HEAD_CLASSES} < set(logs)
    assert model.features(data.images).shape == (8, model.num_features)
    assert set(model.predict(data.images)) == set(HEAD_CLASSES)


# ------------------------------------------------------------------ shapes scoring


def test_shapes_prompts_are_fixed_balanced_and_parse_back():
    prompts = shapes_prompts()
    assert prompts == shapes_prompts() and len(prompts) == 432
    targets = shapes_prompt_targets(prompts)
    single, pair = targets["num_objects"] == 0, targets["num_objects"] == 1
    assert single.sum() == pair.sum() == 216
    for head, values in (("shape_0", SHAPES), ("colour_0", COLOURS), ("position", POSITIONS)):
        assert (torch.bincount(targets[head][single], minlength=len(values)) == 216 // len(values)).all(), head
    # A pair's objects change slots with the relation (canonical_targets): count both slots together.
    pair_colours = torch.cat([targets["colour_0"][pair], targets["colour_1"][pair]])
    assert (torch.bincount(pair_colours, minlength=len(COLOURS)) == 2 * 216 // len(COLOURS)).all()
    assert (torch.bincount(targets["layout"][pair]) == 216 // 2).all()


@pytest.mark.parametrize("templates", ["canonical", "heldout"])
def test_shapes_scoring_of_true_images_by_an_oracle_is_exact_and_counts_each_corruption(templates):
    data = make_shapes(300, seed=5)
    if templates == "canonical":
        prompts = [shapes_prompt(object_list(data.attributes, i)) for i in range(len(data))]
    else:  # held-out captions leave some sizes and positions unsaid: those are not scored
        prompts = data.captions(torch.arange(len(data)), templates="heldout")
    oracle = canonical_targets(data.attributes)
    results = shapes_adherence(prompts, oracle)
    assert results and all(value == 1.0 for value in results.values())

    single = (data.attributes["num_objects"] == 1).nonzero().flatten()
    pair = (data.attributes["num_objects"] == 2).nonzero().flatten()
    corrupted = {head: values.clone() for head, values in oracle.items()}
    corrupted["colour_0"][single[0]] = (corrupted["colour_0"][single[0]] + 1) % len(COLOURS)
    corrupted["layout"][pair[0]] = 1 - corrupted["layout"][pair[0]]
    corrupted["shape_1"][pair[1]] = (corrupted["shape_1"][pair[1]] + 1) % len(SHAPES)
    results = shapes_adherence(prompts, corrupted)
    assert results["single_object_colour_accuracy"] == pytest.approx((len(single) - 1) / len(single))
    assert results["single_object_accuracy"] == pytest.approx((len(single) - 1) / len(single))
    assert results["single_object_shape_accuracy"] == results["single_object_position_accuracy"] == 1.0
    assert results["two_object_layout_accuracy"] == pytest.approx((len(pair) - 1) / len(pair))
    assert results["two_object_shape_accuracy"] == pytest.approx((len(pair) - 1) / len(pair))
    assert results["two_object_accuracy"] == pytest.approx((len(pair) - 2) / len(pair))
    assert results["two_object_colour_accuracy"] == 1.0


def test_shapes_scoring_ignores_an_attribute_the_prompt_does_not_say():
    data = make_shapes(40, seed=2, max_objects=1)
    prompts = [shapes_prompt(object_list(data.attributes, i, say_size=i != 0)) for i in range(len(data))]
    answers = {head: values.clone() for head, values in canonical_targets(data.attributes).items()}
    answers["size_0"][0] = 1 - answers["size_0"][0]  # wrong, but image 0's prompt asks no size
    results = shapes_adherence(prompts, answers)
    assert results["single_object_size_accuracy"] == results["single_object_accuracy"] == 1.0
    answers["size_0"][1] = 1 - answers["size_0"][1]  # image 1's prompt does ask: 1 wrong of the 39 asked
    assert shapes_adherence(prompts, answers)["single_object_size_accuracy"] == pytest.approx(38 / 39)


# ------------------------------------------------------------------ digits scoring


def test_digit_prompts_are_the_acceptance_set_then_one_held_out_prompt_per_digit_and_attribute_bin():
    prompts = digit_prompts()
    assert prompts[:10] == [f"a handwritten digit {k}" for k in range(10)]
    requests = [parse_digit_prompt(prompt) for prompt in prompts]
    assert all(list(request.values())[1:] == [None] * 3 for request in requests[:10])
    bins_with_words = [(name, index) for name, bins in DIGIT_ATTRIBUTE_WORDS.items()
                       for index, words in enumerate(bins) if words]
    asked = sorted((request["label"], *[(name, request[name]) for name in DIGIT_ATTRIBUTE_WORDS
                                        if request[name] is not None]) for request in requests[10:])
    assert asked == sorted((digit, bin_) for bin_ in bins_with_words for digit in range(10))
    assert not any(prompt.startswith(("a handwritten digit", "the digit", "the number")) for prompt in prompts[10:])


def upscaled_digits(count: int):
    """Built-in 8x8 digits (no files needed) resized to the 28x28 that the attribute measures expect."""
    data = load_dataset("digits", "test")
    images = torch.nn.functional.interpolate(data.images[:count], size=(28, 28), mode="bilinear").clamp(0, 1)
    return images, data.labels[:count]


def test_digit_scoring_of_true_digits_is_exact_and_counts_each_wrong_answer():
    images, labels = upscaled_digits(200)
    thickness = digit_attribute_bins(images, labels)["thickness"]
    described = (thickness != 1).nonzero().flatten()[:30]  # middle bins have no words
    prompts = [f"a handwritten digit {label}" for label in labels.tolist()]
    for index in described.tolist():
        word = DIGIT_ATTRIBUTE_WORDS["thickness"][thickness[index].item()]["adjectives"][0]
        prompts[index] = f"a {word} digit {labels[index].item()}"
    results = digit_adherence(prompts, images, labels.clone())
    assert results["digit_accuracy"] == results["attribute_prompts_digit_accuracy"] == 1.0
    assert results["thickness_accuracy"] == 1.0 and "slant_accuracy" not in results

    predicted = labels.clone()
    plain = [i for i in range(len(labels)) if i not in set(described.tolist())]
    wrong = plain[0]
    predicted[wrong] = (predicted[wrong] + 1) % 10
    flipped = described[0].item()  # ask this one for the other end of the scale
    other = "thin" if thickness[flipped] == 2 else "thick"
    prompts[flipped] = f"a {other} digit {labels[flipped].item()}"
    results = digit_adherence(prompts, images, predicted)
    assert results["digit_accuracy"] == pytest.approx((len(plain) - 1) / len(plain))
    same_digit = sum(1 for i in plain if labels[i] == labels[wrong])
    assert results[f"digit_accuracy_{labels[wrong].item()}"] == pytest.approx((same_digit - 1) / same_digit)
    assert results["thickness_accuracy"] == pytest.approx((len(described) - 1) / len(described))


class FakeDigitPipe:
    """Stands for a digits TextToImagePipeline: noise from the generator, with the asked digit written into the
    first pixel, so that FakeDigitClassifier reads it back; records each call's size."""

    device, image_shape, name, weights_hash = torch.device("cpu"), (1, 28, 28), "fake", ""

    def __init__(self):
        self.calls = []

    def __call__(self, prompts, *, num_inference_steps, guidance_scale, sampler, generator, num_images_per_prompt,
                 output_type):
        digits = [parse_digit_prompt(p)["label"] for p in prompts for _ in range(num_images_per_prompt)]
        images = torch.rand(len(digits), *self.image_shape, generator=generator)
        images[:, 0, 0, 0] = torch.tensor(digits) / 10
        self.calls.append(len(images))
        settings = {"steps": num_inference_steps, "sampler": sampler or "fake", "guidance_scale": guidance_scale or 1.0}
        return SimpleNamespace(images=images, settings=settings)


class FakeDigitClassifier(torch.nn.Module):
    image_shape = (1, 28, 28)
    device = torch.device("cpu")

    def predict(self, images):
        return (images[:, 0, 0, 0] * 10).round().long()

    def features(self, images):
        return images.flatten(1)[:, :4]


def test_evaluate_digits_draws_the_counts_asked_in_bounded_calls_and_reads_every_fake_digit_right():
    pipe = FakeDigitPipe()
    results = evaluate_digits(pipe, FakeDigitClassifier(), samples_per_prompt=30, batch_size=25, progress=False,
                              test_images=torch.rand(500, 1, 28, 28))
    assert results["samples"] == 10 * 30 + 70 * 3 and results["acceptance_samples"] == 300
    assert max(pipe.calls) <= 25 and sum(pipe.calls) == results["samples"]
    assert results["digit_accuracy"] == results["attribute_prompts_digit_accuracy"] == 1.0
    assert all(0 <= value <= 1 for key, value in results.items() if key.endswith("accuracy"))
    assert results["FID-MNIST"] > 0 and results["fid_test_images"] == 300


def test_the_same_seed_and_batch_size_draw_the_same_images_and_another_seed_others():
    prompts, counts = digit_prompts()[:12], [3] * 12
    images, image_prompts, _ = generate_for_prompts(FakeDigitPipe(), prompts, counts, batch_size=7, progress=False)
    again, _, _ = generate_for_prompts(FakeDigitPipe(), prompts, counts, batch_size=7, progress=False)
    other, _, _ = generate_for_prompts(FakeDigitPipe(), prompts, counts, seed=1, batch_size=7, progress=False)
    assert image_prompts == [prompt for prompt in prompts for _ in range(3)]
    assert torch.equal(images, again) and not torch.equal(images[:, :, 1:], other[:, :, 1:])


def test_call_plan_keeps_prompts_whole_and_splits_only_prompts_larger_than_a_batch():
    assert _call_plan([200, 200], 100) == [([0], 100, 0), ([0], 100, 1), ([1], 100, 0), ([1], 100, 1)]
    assert _call_plan([3, 3, 3, 5], 7) == [([0, 1], 3, 0), ([2], 3, 0), ([3], 5, 0)]


# ------------------------------------------------------------------ end to end on the tiny run


def test_evaluate_shapes_on_the_tiny_run_returns_every_accuracy_in_0_1_and_a_fid(text_to_image_run,
                                                                                 attribute_classifier_run):
    pipe, classifier = minisd.load(text_to_image_run), minisd.load(attribute_classifier_run)
    prompts = shapes_prompts()[::54]  # 4 single-object and 4 two-object prompts
    results = evaluate_shapes(pipe, classifier, prompts=prompts, samples_per_prompt=2, steps=2, progress=False,
                              test_images=make_shapes(16, seed=1).images)
    checks = ("shape", "colour", "size", "position", "count")
    expected = {f"single_object_{check}_accuracy" for check in checks} | {"single_object_accuracy"}
    expected |= {f"two_object_{check}_accuracy" for check in ("shape", "colour", "size", "layout", "count")}
    assert expected | {"two_object_accuracy"} == {key for key in results if key.endswith("accuracy")}
    assert all(0 <= results[key] <= 1 for key in expected)
    assert results["samples"] == 16 and math.isfinite(results["FID-shapes"]) and results["FID-shapes"] >= 0


def test_eval_command_on_a_text_to_image_run_prints_the_table_and_writes_json(text_to_image_run,
                                                                              attribute_classifier_run, tmp_path,
                                                                              capsys):
    out = tmp_path / "adherence.json"
    assert main(["eval", str(text_to_image_run), "--classifier", str(attribute_classifier_run),
                 "--samples-per-prompt", "1", "--steps", "1", "--json", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    results = json.loads(out.read_text())
    assert results["dataset"] == "shapes" and results["samples"] == 432 and results["steps"] == 1
    assert "two_object_accuracy" in printed and "FID-shapes" in printed and f"wrote {out}" in printed


@pytest.mark.parametrize("extra, message", [
    ([], "prompt adherence needs --classifier"),
    (["--classifier", "{run}/unet"], "is a latent_diffusion trained on shapes"),
    (["--classifier", "{classifier}", "--fid-classifier", "{classifier}"], "--fid-classifier: not for a text-to-image"),
])
def test_eval_of_a_text_to_image_run_refuses_a_wrong_request_before_any_work(
        extra, message, text_to_image_run, attribute_classifier_run, tmp_path, capsys):
    extra = [word.format(run=text_to_image_run, classifier=attribute_classifier_run) for word in extra]
    out = tmp_path / "never.json"
    assert main(["eval", str(text_to_image_run), *extra, "--json", str(out), "--no-progress"]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_eval_refuses_adherence_options_for_a_model_that_is_not_text_to_image(attribute_classifier_run, capsys):
    assert main(["eval", str(attribute_classifier_run), "--classifier", str(attribute_classifier_run)]) == 2
    assert "--classifier: for text-to-image models" in capsys.readouterr().err
