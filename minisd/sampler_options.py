"""The samplers' own arguments on the command line: one table, read by ``minisd sample``, ``eval`` and ``generate``.

Each sampler of :data:`minisd.diffusion.samplers.SAMPLERS` takes keyword arguments of its own: ``eta`` (ddim,
euler_ancestral, dpmpp_2m(_sde)), ``snr``, ``corrector_steps`` and ``predictor`` (pc), ``steps_per_level`` and
``step_size`` (annealed_langevin), ``method``, ``rtol`` and ``atol`` (ode). :data:`SAMPLER_OPTIONS` names each once,
with its flag and help. A command adds the flags with :func:`add_sampler_option_flags` and reads what was given with
:func:`given_sampler_args`: a dict by argument name, which goes unchanged to the sampler, to
:func:`minisd.diffusion.samplers.check_sampler_args` (which sampler takes what, and in what range, checked before
any work), into ``minisd eval``'s JSON and into a PNG's settings, from which ``minisd generate --from`` reads it back.

The flags only parse text into numbers; ranges are the samplers' to check. (``--eta``'s range is also checked here,
as it was before the table.) Nothing here imports torch, so ``minisd --help`` stays fast.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable


def non_negative_number(text: str) -> float:
    """An argparse type: a finite number, 0 or more."""
    value = number(text)
    if not value >= 0 or value == float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a finite number, 0 or more, got {text}")
    return value


def number(text: str) -> float:
    """An argparse type: any number (the sampler checks its range)."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None


def whole_number(text: str) -> int:
    """An argparse type: any whole number (the sampler checks its range)."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None


@dataclass(frozen=True)
class SamplerOption:
    """One sampler argument on the command line: ``name`` as the sampler function takes it, its ``flag``, ``parse``
    (an argparse type) and ``help``."""

    name: str
    flag: str
    parse: Callable[[str], Any]
    help: str


SAMPLER_OPTIONS = (
    SamplerOption("eta", "--eta", non_negative_number,
                  "noise of ddim (at most 1) / euler_ancestral / dpmpp_2m(_sde) (0: deterministic)"),
    SamplerOption("snr", "--snr", number, "pc: signal-to-noise ratio of the Langevin corrector's steps (default 0.16)"),
    SamplerOption("corrector_steps", "--corrector-steps", whole_number,
                  "pc: Langevin corrector steps per step (default 1; 0: the predictor alone)"),
    SamplerOption("predictor", "--predictor", str, "pc: reverse_diffusion (default) or euler_maruyama"),
    SamplerOption("steps_per_level", "--steps-per-level", whole_number,
                  "annealed_langevin: Langevin steps per noise level (default 5)"),
    SamplerOption("step_size", "--step-size", number,
                  "annealed_langevin: Langevin step at the smallest noise level (default 0.2 sigma_min^2)"),
    SamplerOption("method", "--ode-method", str,
                  "ode: dopri5 (adaptive, default) or rk4 / midpoint / euler (fixed steps on the grid)"),
    SamplerOption("rtol", "--rtol", number, "ode: dopri5's relative tolerance (default 1e-5)"),
    SamplerOption("atol", "--atol", number, "ode: dopri5's absolute tolerance (default 1e-5)"),
)


def add_sampler_option_flags(parser: argparse.ArgumentParser) -> None:
    """Add every flag of :data:`SAMPLER_OPTIONS` to ``parser``; each is stored under its argument's name, None when
    not given (so the sampler's default applies, and ``--from`` can tell a setting given from one left out)."""
    for option in SAMPLER_OPTIONS:
        parser.add_argument(option.flag, dest=option.name, type=option.parse, help=option.help)


def given_sampler_args(args: argparse.Namespace) -> dict[str, Any]:
    """The sampler arguments given on the command line, by name: ``{"snr": 0.2}`` for ``--snr 0.2``."""
    return {option.name: getattr(args, option.name) for option in SAMPLER_OPTIONS
            if getattr(args, option.name, None) is not None}


def flags_of(sampler_args: dict[str, Any]) -> list[str]:
    """The flags that give ``sampler_args``: ``["--ode-method", "rk4"]`` for ``{"method": "rk4"}``."""
    flag = {option.name: option.flag for option in SAMPLER_OPTIONS}
    return [word for name, value in sampler_args.items() for word in (flag[name], str(value))]


def given_flags(sampler_args: dict[str, Any]) -> list[str]:
    """The flags that gave ``sampler_args`` (``sampler``, ``steps``, ``spacing`` and the samplers' own), without
    their values: ``["--steps", "--ode-method"]`` for ``{"steps": 10, "method": "rk4"}``."""
    flag = {option.name: option.flag for option in SAMPLER_OPTIONS}
    return [flag.get(name, f"--{name}") for name in sampler_args]
