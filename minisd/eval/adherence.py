"""Prompt adherence: does a text-to-image model draw what its prompt asks for? (``minisd eval RUN --classifier ...``)

A classifier trained on real images reads each generated image, and the prompt is read back by the
grammar that wrote the training captions (:func:`~minisd.data.captions.parse_digit_prompt`,
:func:`~minisd.data.shapes.parse_shapes_prompt`); a sample is right when the two agree.

- Digits: the evaluation classifier (:class:`~minisd.models.classifier.Classifier`) checks the digit, and
  for attribute words ("a thick 3") the SAME measurements that wrote them into the captions
  (:mod:`minisd.data.attributes`, with the bins of the digit asked for) check the attribute. The
  acceptance set is "a handwritten digit k" for k = 0..9; FID-MNIST is that set's samples against as
  many test images, on the same classifier's features.
- Shapes: the attribute classifier (:class:`~minisd.models.attribute_classifier.AttributeClassifier`)
  reads every object's shape, colour and size, a lone object's position, how two objects stand to each
  other, and how many there are. Single-object prompts get one accuracy per attribute; a two-object
  sample is right only when everything about both objects and their layout is. FID-shapes compares the
  samples with test images on the attribute classifier's features.

Samples are deterministic: each pipeline call draws whole prompts' samples from a generator seeded by
the run's seed and the index of its first prompt (so the same seed and batch size give the same images).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from minisd.data.attributes import digit_attribute_bins
from minisd.data.captions import (DIGIT_ATTRIBUTE_WORDS, DIGIT_CLASS_SLOTS, DIGIT_TEMPLATES, parse_digit_prompt,
                                  tidy)
from minisd.data.shapes import COLOURS, POSITIONS, RELATIONS, SHAPES, SIZES, parse_shapes_prompt, shapes_prompt
from minisd.errors import ConfigError
from minisd.eval.fid import fid
from minisd.models.attribute_classifier import IGNORE, OBJECT_ATTRIBUTES, canonical_targets

DIGIT_PROMPT = "a handwritten digit {numeral}"  # the acceptance prompt (a training template without attributes)
# Each attribute prompt gets this fraction of the samples of an acceptance prompt: 10 digits per attribute
# bin, so each bin is still scored on as many samples as one digit of the acceptance set.
ATTRIBUTE_SAMPLES_DIVISOR = 10
SHAPES_PROMPTS_PER_SET = 216  # single-object and two-object prompts each; a multiple of 4, 6, 2, 9 keeps them balanced
SHAPES_SAMPLES_PER_PROMPT = 5  # 432 prompts x 5 = 2,160 samples
PROMPT_SET_SEED = 0

# Which heads of the attribute classifier decide each reported attribute (see canonical_targets).
SINGLE_OBJECT_CHECKS = {"shape": ("shape_0",), "colour": ("colour_0",), "size": ("size_0",),
                        "position": ("position",), "count": ("num_objects",)}
TWO_OBJECT_CHECKS = {"shape": ("shape_0", "shape_1"), "colour": ("colour_0", "colour_1"),
                     "size": ("size_0", "size_1"), "layout": ("layout",), "count": ("num_objects",)}


# ------------------------------------------------------------------ sampling


def _call_plan(counts: Sequence[int], batch_size: int) -> list[tuple[list[int], int, int]]:
    """Pipeline calls ``(prompt indices, images per prompt, part)`` drawing ``counts[i]`` images of prompt i.

    A call holds whole prompts of one count, at most ``batch_size`` images; a prompt with more images than
    that is split into parts of ``batch_size``.
    """
    calls, index = [], 0
    while index < len(counts):
        count = counts[index]
        if count >= batch_size:
            calls += [([index], min(batch_size, count - start), part)
                      for part, start in enumerate(range(0, count, batch_size))]
            index += 1
            continue
        group = [index]
        while (index + len(group) < len(counts) and len(group) < batch_size // count
               and counts[index + len(group)] == count):
            group.append(index + len(group))
        calls.append((group, count, 0))
        index += len(group)
    return calls


@torch.no_grad()
def generate_for_prompts(
    pipe: Any,
    prompts: Sequence[str],
    counts: Sequence[int],
    *,
    steps: int = 20,
    guidance_scale: float | None = None,
    sampler: str | None = None,
    seed: int = 0,
    batch_size: int = 100,
    progress: bool = True,
    **sampler_args: Any,
) -> tuple[torch.Tensor, list[str], dict[str, Any]]:
    """``counts[i]`` images of each ``prompts[i]``: images ``(N, C, H, W)`` in [0, 1] (CPU), each image's prompt,
    and the settings the pipeline ran with (steps, sampler, guidance scale and interval, seed, sampler arguments).

    ``pipe`` is a :class:`~minisd.pipelines.TextToImagePipeline`. Each call's generator is seeded from
    ``seed`` and the call's first prompt (see the module docstring).
    """
    if batch_size < 1 or any(count < 1 for count in counts) or len(counts) != len(prompts):
        raise ConfigError(f"need a positive batch size and one positive count per prompt; got batch_size "
                          f"{batch_size}, {len(counts)} counts for {len(prompts)} prompts")
    images, image_prompts, settings = [], [], {}
    bar = tqdm(total=sum(counts), unit="image", disable=not progress, leave=False, dynamic_ncols=True,
               desc="prompt adherence")
    for indices, count, part in _call_plan(counts, batch_size):
        call_seed = (seed * 1_000_003 + indices[0] * 1_009 + part) % 2**63
        output = pipe([prompts[i] for i in indices], num_inference_steps=steps, guidance_scale=guidance_scale,
                      sampler=sampler, generator=torch.Generator(pipe.device).manual_seed(call_seed),
                      num_images_per_prompt=count, output_type="pt", **sampler_args)
        images.append(output.images)
        image_prompts += [prompts[i] for i in indices for _ in range(count)]
        # The guidance interval the pipeline used: the one asked for, or the model's own default.
        settings = {key: output.settings[key] for key in ("steps", "sampler", "guidance_scale", "guidance_interval")
                    if key in output.settings}
        bar.update(len(output.images))
    bar.close()
    return torch.cat(images), image_prompts, {**settings, "seed": seed, **sampler_args}


@torch.no_grad()
def predict_in_batches(classifier: Any, images: torch.Tensor, batch_size: int = 500) -> Any:
    """``classifier.predict`` over ``images`` ``(N, C, H, W)`` in batches, on the classifier's device; the
    answers on the CPU: ``(N,)``, or ``{head: (N,)}`` for a classifier with several heads."""
    classifier.eval()
    answers = [classifier.predict(images[start:start + batch_size].to(classifier.device))
               for start in range(0, len(images), batch_size)]
    if isinstance(answers[0], Mapping):
        return {head: torch.cat([answer[head] for answer in answers]).cpu() for head in answers[0]}
    return torch.cat(answers).cpu()


def _check_image_shape(pipe: Any, classifier: Any) -> None:
    if tuple(pipe.image_shape) != tuple(classifier.image_shape):
        raise ConfigError(f"the model makes {tuple(pipe.image_shape)} images and the classifier reads "
                          f"{tuple(classifier.image_shape)}: use a classifier trained on the model's dataset")


def _fraction(hits: torch.Tensor) -> float:
    """The mean of a boolean tensor; nan for an empty one (nothing asked, nothing scored)."""
    return hits.float().mean().item() if len(hits) else math.nan


# ------------------------------------------------------------------ digits


def _bin_word(attribute: str, bin_index: int) -> str:
    return DIGIT_ATTRIBUTE_WORDS[attribute][bin_index]["adjectives"][0]


def digit_prompts() -> list[str]:
    """The fixed digit prompt set: "a handwritten digit k" for k = 0..9 (the acceptance set), then for every
    attribute bin that has words, one prompt per digit in the HELD-OUT templates ("a thick digit three",
    "a handwritten number 3, in thick strokes"), the templates taken in turn: 10 + 70 prompts."""
    prompts = [DIGIT_PROMPT.format(numeral=digit) for digit in range(10)]
    templates = DIGIT_TEMPLATES["heldout"]
    attribute_prompts = []
    for attribute, bins in DIGIT_ATTRIBUTE_WORDS.items():
        for bin_index, words in enumerate(bins):
            if not words:
                continue
            for digit in range(10):
                template = templates[len(attribute_prompts) % len(templates)]
                slots = {name: per_class[digit][0] for name, per_class in DIGIT_CLASS_SLOTS.items()}
                attribute_prompts.append(tidy(template.format(
                    **slots, adjectives=words["adjectives"][0], phrases=", " + words["phrases"][0])))
    return prompts + attribute_prompts


def digit_adherence(prompts: Sequence[str], images: torch.Tensor, predicted: torch.Tensor) -> dict[str, float]:
    """Accuracies of digit samples: ``images`` ``(N, 1, 28, 28)`` in [0, 1], drawn for ``prompts`` (N, one per
    image), that the classifier read as ``predicted`` ``(N,)``.

    ``digit_accuracy`` (and ``digit_accuracy_k`` per digit): prompts that name a digit and no attribute;
    ``attribute_prompts_digit_accuracy``: the digit of the prompts that name attributes; ``<attribute>_accuracy``
    (and ``<attribute>_<word>_accuracy`` per bin): the measured bin, with the bins of the digit asked for,
    equals the one asked for.
    """
    requests = [parse_digit_prompt(prompt) for prompt in prompts]
    if any(request["label"] is None for request in requests):
        raise ConfigError("every digit prompt must name a digit, e.g. 'a handwritten digit 7'")
    asked = torch.tensor([request["label"] for request in requests])
    digit_right = predicted.cpu() == asked
    attributes = list(DIGIT_ATTRIBUTE_WORDS)
    plain = torch.tensor([all(request[name] is None for name in attributes) for request in requests])
    results = {"digit_accuracy": _fraction(digit_right[plain])}
    results.update({f"digit_accuracy_{digit}": _fraction(digit_right[plain & (asked == digit)]) for digit in range(10)})
    if plain.all():
        return results
    results["attribute_prompts_digit_accuracy"] = _fraction(digit_right[~plain])
    measured = digit_attribute_bins(images.cpu(), asked)
    for name in attributes:
        said = torch.tensor([request[name] is not None for request in requests])
        if not said.any():
            continue
        wanted = torch.tensor([-1 if request[name] is None else request[name] for request in requests])
        right = measured[name] == wanted
        results[f"{name}_accuracy"] = _fraction(right[said])
        for bin_index in wanted[said].unique().tolist():
            results[f"{name}_{_bin_word(name, bin_index)}_accuracy"] = _fraction(right[wanted == bin_index])
    return results


def evaluate_digits(
    pipe: Any,
    classifier: Any,
    *,
    samples_per_prompt: int = 200,
    test_images: torch.Tensor | None = None,
    **sampling: Any,
) -> dict[str, Any]:
    """Prompt adherence of a digits text-to-image ``pipe`` on :func:`digit_prompts`, read by ``classifier``.

    ``samples_per_prompt`` for each acceptance prompt, a tenth of it (at least 1) for each attribute prompt.
    With ``test_images`` ``(M, 1, 28, 28)``, also ``FID-MNIST``: the acceptance samples against as many test
    images. ``sampling``: :func:`generate_for_prompts`'s keywords (steps, guidance_scale, sampler, seed,
    batch_size, progress, sampler arguments). Returns :func:`digit_adherence`'s accuracies with the sample
    counts and the sampling settings.
    """
    _check_image_shape(pipe, classifier)
    prompts = digit_prompts()
    counts = [samples_per_prompt if index < 10 else max(1, samples_per_prompt // ATTRIBUTE_SAMPLES_DIVISOR)
              for index in range(len(prompts))]
    images, image_prompts, settings = generate_for_prompts(pipe, prompts, counts, **sampling)
    predicted = predict_in_batches(classifier, images)
    acceptance = 10 * samples_per_prompt  # the first images: the acceptance prompts come first
    results: dict[str, Any] = {"task": "digits", "prompts": len(prompts), "samples": len(images),
                               "acceptance_samples": acceptance, **settings,
                               **digit_adherence(image_prompts, images, predicted)}
    if test_images is not None:
        reference = test_images[:acceptance]
        results["FID-MNIST"] = fid(classifier, images[:acceptance], reference)
        results["fid_test_images"] = len(reference)
    return results


# ------------------------------------------------------------------ shapes


def _balanced_columns(num_rows: int, sizes: Sequence[int], generator: torch.Generator) -> list[list[int]]:
    """``num_rows`` rows of one value per column, column j drawn from range(sizes[j]): every value of a column
    appears equally often (``num_rows`` is a multiple of each size), the columns shuffled independently."""
    columns = [torch.arange(num_rows)[torch.randperm(num_rows, generator=generator)] % size for size in sizes]
    return torch.stack(columns, 1).tolist()


def shapes_prompts(per_set: int = SHAPES_PROMPTS_PER_SET) -> list[str]:
    """The fixed shapes prompt set: ``per_set`` single-object prompts (every attribute said: "a small red
    circle in the top left"), then ``per_set`` two-object prompts ("a large blue square to the left of a small
    white diamond"), in :func:`~minisd.data.shapes.shapes_prompt`'s wording. Each attribute's values (and each
    relation) appear equally often in each set; the same prompts every time."""
    generator = torch.Generator().manual_seed(PROMPT_SET_SEED)
    single = [shapes_prompt([{"shape": shape, "colour": colour, "size": size, "position": position}])
              for shape, colour, size, position in _balanced_columns(
                  per_set, (len(SHAPES), len(COLOURS), len(SIZES), len(POSITIONS)), generator)]
    object_sizes = (len(SHAPES), len(COLOURS), len(SIZES))
    pairs = [shapes_prompt([{"shape": s0, "colour": c0, "size": z0, "relation": relation},
                            {"shape": s1, "colour": c1, "size": z1}])
             for s0, c0, z0, s1, c1, z1, relation in _balanced_columns(
                 per_set, (*object_sizes, *object_sizes, len(RELATIONS)), generator)]
    return single + pairs


def shapes_prompt_targets(prompts: Sequence[str]) -> dict[str, torch.Tensor]:
    """What each prompt asks of each head of the attribute classifier: ``{head: (N,) int64}``, IGNORE where
    the prompt does not say (see :func:`~minisd.models.attribute_classifier.canonical_targets`)."""
    def said(value: int | None) -> int:
        return IGNORE if value is None else value

    rows = {key: [] for key in ("num_objects", *OBJECT_ATTRIBUTES, "position", "relation")}
    for prompt in prompts:
        objects = parse_shapes_prompt(prompt)
        rows["num_objects"].append(len(objects))
        for key in (*OBJECT_ATTRIBUTES, "position"):
            rows[key].append([said(objects[slot][key]) if slot < len(objects) else -1 for slot in range(2)])
        rows["relation"].append(said(objects[0]["relation"]) if len(objects) == 2 else -1)
    return canonical_targets({key: torch.tensor(values, dtype=torch.long) for key, values in rows.items()})


def shapes_adherence(prompts: Sequence[str], predictions: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Accuracies of shapes samples drawn for ``prompts`` (N, one per image), which the attribute classifier
    read as ``predictions`` (``{head: (N,)}``, its :meth:`predict`).

    ``single_object_<attribute>_accuracy`` for shape, colour, size, position and count, over the one-object
    prompts that say the attribute, and ``single_object_accuracy``: all of them right. ``two_object_<check>_accuracy``
    for shape, colour, size (of both objects), layout and count, and ``two_object_accuracy``: every attribute of
    both objects and their layout right.
    """
    targets = shapes_prompt_targets(prompts)
    right = {head: (predictions[head].cpu() == target) | (target == IGNORE) for head, target in targets.items()}
    asked = {head: target != IGNORE for head, target in targets.items()}
    results = {}
    for group, checks, objects in (("single_object", SINGLE_OBJECT_CHECKS, 0), ("two_object", TWO_OBJECT_CHECKS, 1)):
        in_group = targets["num_objects"] == objects
        if not in_group.any():
            continue
        every_check = torch.ones_like(in_group)
        for check, heads in checks.items():
            check_right = torch.stack([right[head] for head in heads]).all(0)
            check_asked = torch.stack([asked[head] for head in heads]).any(0)
            results[f"{group}_{check}_accuracy"] = _fraction(check_right[in_group & check_asked])
            every_check &= check_right
        results[f"{group}_accuracy"] = _fraction(every_check[in_group])
    return results


def evaluate_shapes(
    pipe: Any,
    attribute_classifier: Any,
    *,
    samples_per_prompt: int = SHAPES_SAMPLES_PER_PROMPT,
    prompts: Sequence[str] | None = None,
    test_images: torch.Tensor | None = None,
    **sampling: Any,
) -> dict[str, Any]:
    """Prompt adherence of a shapes text-to-image ``pipe`` on ``prompts`` (default :func:`shapes_prompts`),
    read by ``attribute_classifier``: :func:`shapes_adherence`'s accuracies, the sample counts and settings,
    and with ``test_images`` ``(M, 3, 32, 32)`` ``FID-shapes``, every sample against as many test images on
    the attribute classifier's features. ``sampling``: as for :func:`evaluate_digits`."""
    _check_image_shape(pipe, attribute_classifier)
    prompts = list(shapes_prompts() if prompts is None else prompts)
    images, image_prompts, settings = generate_for_prompts(pipe, prompts, [samples_per_prompt] * len(prompts),
                                                           **sampling)
    predictions = predict_in_batches(attribute_classifier, images)
    results: dict[str, Any] = {"task": "shapes", "prompts": len(prompts), "samples": len(images), **settings,
                               **shapes_adherence(image_prompts, predictions)}
    if test_images is not None:
        reference = test_images[:len(images)]
        results["FID-shapes"] = fid(attribute_classifier, images, reference)
        results["fid_test_images"] = len(reference)
    return results
