"""What the library's loss functions read: the loss weights, the transport term's settings and
the platform's way of running them, the names of the loss terms, and `setting`, the one place a
setting of the config tree is declared. Frozen dataclasses of scalars, so they are hashable static
jit arguments; this module imports nothing but the standard library, so a config can be read
without JAX.

The trainer's config tree holds these sections as they are (`[loss]`, `[transport]` in TOML);
docs/results.md gives the measurement behind each default.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Declared:
    """A setting's declaration, beside its default: what `rqvae configs default` prints, the
    named flags of `rqvae train`, run names and the range checks all read it."""

    meaning: str  # one line: what it does, in what unit; the TOML comment and the flag's help
    short: str = ""  # its tag in run names and report headers; empty: the key's last part
    flag: str = ""  # a named option of `rqvae train` ("--steps"); empty: reached with --set
    bounds: str = ""  # ">= 0", "> 0", "[0, 1]", "[1, 2)", "(0, 1)", then an optional note
    #   in brackets ("(0: off)"); each number of a tuple is held to it
    choices: tuple[str, ...] = ()  # the values a text setting may take
    shape: bool = False  # fixes the parameters' shapes, so a resumed run may not change it
    from_data: bool = False  # set from the data set, not by the user

    def violation(self, value) -> str | None:
        """What is wrong with `value`, as the end of "KEY must be ...", or None when it is in
        range."""
        if self.choices:
            if value in self.choices:
                return None
            return f"{' or '.join(repr(c) for c in self.choices)}, got {value!r}"
        if not self.bounds:
            return None
        numbers = value if isinstance(value, tuple) else (value,)
        if all(_within(self.bounds, n) for n in numbers):
            return None
        kind = ("numbers " if isinstance(value, tuple) else
                "a finite number " if isinstance(value, float) and self.bounds[0] in "<>" else "")
        where = "" if self.bounds[0] in "<>" else "in "
        shown = list(value) if isinstance(value, tuple) else value
        return f"{kind}{where}{self.bounds}, got {shown}"


_BOUNDS = re.compile(r"(?P<op>>=|>|<=|<)\s*(?P<at>\S+)|(?P<lo_in>[\[(])(?P<lo>[^,]+),\s*"
                     r"(?P<hi>[^\])]+)(?P<hi_in>[\])])")


def _within(bounds: str, number) -> bool:
    found = _BOUNDS.match(bounds)
    if found is None:
        raise ValueError(f"bounds {bounds!r} are not '>= N', '> N' or an interval")
    if isinstance(number, float) and not math.isfinite(number):
        return False
    if found["op"]:
        at = float(found["at"])
        return {">=": number >= at, ">": number > at, "<=": number <= at,
                "<": number < at}[found["op"]]
    lo, hi = float(found["lo"]), float(found["hi"])
    return ((lo <= number if found["lo_in"] == "[" else lo < number)
            and (number <= hi if found["hi_in"] == "]" else number < hi))


def setting(default, meaning: str, **declared):
    """A field of the config tree with its default and its declaration (`Declared`'s fields),
    which every copy of a setting's name, meaning and range is derived from."""
    return dataclasses.field(default=default,
                             metadata={"declared": Declared(meaning, **declared)})


def declared(cls: type, name: str) -> Declared | None:
    """The declaration of field `name` of a config class, or None for a section."""
    return next((f.metadata.get("declared") for f in dataclasses.fields(cls) if f.name == name),
                None)


# The terms `losses.loss_terms` returns, total first; each but the first has a weight
# `lambda_<term>` in LossWeights except recon, whose weight is 1.
LOSS_TERMS = ("total", "recon", "commit", "codebook", "wasserstein")

# Batches of encoder outputs that k-means initialisation clusters (`remedies.kmeans_init`).
KMEANS_BATCHES = 8


@dataclass(frozen=True, kw_only=True)
class LossWeights:
    """The weights of the loss terms (recon's is 1)."""

    lambda_commit: float = setting(0.25, "weight of the commitment loss: pulls the encoder "
                                   "toward its codes", short="lcm", flag="--lambda-commit",
                                   bounds=">= 0")
    lambda_codebook: float = setting(1.0, "weight of the codebook loss: moves each picked code "
                                     "toward its level's input", short="lc",
                                     flag="--lambda-codebook", bounds=">= 0")
    lambda_wasserstein: float = setting(0.0, "weight of the transport term: moves the codes no "
                                        "point picks; try 0.5", short="lw",
                                        flag="--lambda-wasserstein", bounds=">= 0")


@dataclass(frozen=True, kw_only=True)
class Transport:
    """The transport term's Sinkhorn solve and re-anchoring (docs/transport.md)."""

    epsilon: float = setting(0.05, "entropic regularization: a fraction of each level's mean "
                             "cost", short="eps", flag="--sinkhorn-epsilon", bounds="> 0")
    iters: int = setting(200, "most Sinkhorn iterations per level per step", bounds=">= 1")
    tolerance: float = setting(0.005, "a solve stops once its row-marginal error (L1) is at "
                               "most this; 0: always run iters", short="tol",
                               bounds=">= 0 (0: always run transport.iters)")
    overrelaxation: float = setting(1.6, "over-relaxed Sinkhorn updates once plain ones slow; "
                                    "1: plain", short="omega",
                                    bounds="[1, 2) (1: plain Sinkhorn)")
    anchor_window: int = setting(
        20, "steps unpicked after which a code is stale (sweeps of the codebook where a step "
        "quantizes fewer points than there are codes): stale codes alone take the term's "
        "gradient, and are re-anchored on batch points drawn uniformly, every quarter window; "
        "0: every code takes the gradient at every step and none is re-anchored",
        short="anchor", bounds=">= 0 (0: off)")
    encoder_grad: bool = setting(False, "true: the term's gradient also reaches the encoder",
                                 short="enc")


@dataclass(frozen=True, kw_only=True)
class Platform:
    """How a step runs where it runs, decided once (`Platform.of`) and passed down: the trainer
    builds it from its devices, the library from `jax.default_backend()` in `quantizer_losses`,
    and `transport_schedule` hands `branch` on to `update_codebook` in its `Schedule`.

    On CPU the stabilized scaling loop and `lax.cond` branches are fastest (a branch runs one
    side, so steps with nothing to re-anchor skip the solve). On accelerators the log-domain loop,
    and selects instead of branches: there a branch reads its predicate back to the host, which
    would stall the device once per step (scripts/gpu_checks.sh measures the choice)."""

    solver: str = "scaling"  # Sinkhorn: "scaling" or "logdomain" (sinkhorn.SOLVERS)
    branch: bool = True  # decide "skip or not" with lax.cond; False: compute both, select

    @classmethod
    def of(cls, name: str) -> Platform:
        """The choice for a JAX platform name ("cpu", "gpu", "tpu")."""
        accelerator = name != "cpu"
        return cls(solver="logdomain" if accelerator else "scaling", branch=not accelerator)
