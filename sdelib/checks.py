"""Checks at the public boundary: one helper per kind of argument, shared by every module.

Each helper raises a `ValueError` (a bad value) or a `TypeError` (a bad kind of object) whose
message names the argument, what it got and what is allowed, and returns the value normalised
(e.g. `numpy.int64(5)` -> 5), so callers write `steps = check_positive_int("steps", steps)`.

NaN and infinities are checked where they enter (inputs, once) and where they leave (results,
once), never at every step of a loop: on a GPU each check is a synchronisation. `FiniteSteps`
counts on the device, without synchronising, how many leading steps of a sampler stayed finite,
so that a non-finite result can be reported with the step where it first appeared.
`checked_score_fn` checks a score's output (type, shape, dtype, finite) on its first call only.
"""
from __future__ import annotations

import math
import numbers

import torch

__all__ = ["check_positive_int", "check_int", "check_real", "check_choice", "check_bool",
           "check_callable", "check_instance", "check_generator", "check_shape",
           "check_tensor", "check_floating_tensor", "check_finite_tensor",
           "check_batch_nonempty", "check_data", "check_labels", "check_weights",
           "check_covariances", "check_score_output",
           "checked_score_fn",
           "FiniteSteps", "check_finite_result"]


def _got(value) -> str:
    """`value` as a message shows it: its repr and, unless obvious, its type (arrays and tensors
    by their type, shape and dtype)."""
    kind = type(value).__name__
    if hasattr(value, "shape") and hasattr(value, "dtype") and getattr(value, "ndim", 0):
        return f"a {kind} of shape {tuple(value.shape)} and dtype {value.dtype}"
    text = " ".join(repr(value).split())
    if len(text) > 60:
        text = text[:57] + "..."
    return text if kind in ("int", "float", "str", "NoneType") else f"{text} ({kind})"


def check_int(name: str, value, minimum: int | None = None) -> int:
    """An integer (Python or numpy, not a bool) >= minimum, returned as an int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Number):
        if not (torch.is_tensor(value) and value.ndim == 0 and not value.is_floating_point()
                and value.dtype != torch.bool):
            raise TypeError(f"{name} must be an integer, got {_got(value)}")
        value = int(value)
    if not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {_got(value)}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def check_positive_int(name: str, value) -> int:
    """An integer >= 1 (e.g. a number of steps or a batch size)."""
    return check_int(name, value, minimum=1)


def _interval(low, high, low_open, high_open) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high:g}"
    return ""


def check_real(name: str, value, low: float | None = None, high: float | None = None, *,
               low_open: bool = False, high_open: bool = False, finite: bool = True) -> float:
    """A real number (not a bool, not NaN; finite unless finite=False) in the interval given by
    `low`/`high`, each end closed unless `low_open`/`high_open`; returned as a float."""
    allowed = " ".join(p for p in ("a finite" if finite else "a", "number",
                                   _interval(low, high, low_open, high_open)) if p)
    if torch.is_tensor(value) and value.ndim == 0 and value.dtype != torch.bool:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {allowed}, got {_got(value)}")
    number = float(value)
    if math.isnan(number) or (finite and math.isinf(number)):
        raise ValueError(f"{name} must be {allowed}, got {number}")
    too_low = low is not None and (number <= low if low_open else number < low)
    too_high = high is not None and (number >= high if high_open else number > high)
    if too_low or too_high:
        raise ValueError(f"{name} must be {allowed}, got {number:g}")
    return number


def check_choice(name: str, value, choices):
    """One of `choices` (compared with ==): the message lists them."""
    try:
        known = value in choices
    except TypeError:                               # unhashable values in a set or dict
        known = False
    if not known:
        raise ValueError(f"unknown {name} {value!r}; choose one of {tuple(choices)}")
    return value


def check_bool(name: str, value) -> bool:
    """True or False (also numpy's bool)."""
    if not isinstance(value, bool) and type(value).__name__ != "bool_":
        raise TypeError(f"{name} must be True or False, got {_got(value)}")
    return bool(value)


def check_callable(name: str, value, optional: bool = False):
    """A function (or None if `optional`)."""
    if value is None and optional:
        return None
    if not callable(value):
        allowed = "a function or None" if optional else "a function"
        raise TypeError(f"{name} must be {allowed}, got {_got(value)}")
    return value


def check_instance(name: str, value, kind: type, example: str):
    """An instance of `kind`; the message shows an `example` of one."""
    if not isinstance(value, kind):
        raise TypeError(f"{name} must be a {kind.__name__} (e.g. {example}), got {_got(value)}")
    return value


def check_generator(name: str, value) -> torch.Generator | None:
    """None or a torch.Generator: a seed or a numpy Generator is refused with how to make one."""
    if value is not None and not isinstance(value, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator or None, got {_got(value)}; "
                        "make one with torch.Generator().manual_seed(seed)")
    return value


def check_shape(name: str, shape, min_dims: int = 2) -> tuple[int, ...]:
    """A shape (batch, ...) of >= `min_dims` positive integers, as a tuple of ints."""
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__len__"):
        raise TypeError(f"{name} must be a tuple of integers (batch, ...data dims), "
                        f"got {_got(shape)}")
    if len(shape) < min_dims:
        raise ValueError(f"{name} must be (batch, ...data dims), got {tuple(shape)}")
    sizes = []
    for size in shape:
        try:
            sizes.append(check_positive_int(f"every entry of {name}", size))
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{name} must hold integers >= 1 (batch, ...data dims), "
                            f"got {tuple(shape)}") from None
    return tuple(sizes)


def check_tensor(name: str, x) -> torch.Tensor:
    if not torch.is_tensor(x):
        raise TypeError(f"{name} must be a torch.Tensor, got {_got(x)}")
    return x


def check_floating_tensor(name: str, x) -> torch.Tensor:
    """A floating-point tensor: integer images must be scaled to [0, 1] first."""
    check_tensor(name, x)
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype} (convert "
                        f"with .float(); integer images: .float() / 255)")
    return x


def check_batch_nonempty(name: str, x) -> torch.Tensor:
    """A tensor with a batch dimension holding at least one sample."""
    if x.ndim < 1 or x.shape[0] == 0 or x.numel() == 0:
        raise ValueError(f"{name} must be a non-empty batch (batch >= 1, ...), got shape "
                         f"{tuple(x.shape)}")
    return x


def check_finite_tensor(name: str, x: torch.Tensor) -> torch.Tensor:
    """No NaN or infinity in x (one synchronisation): the message names the bad samples."""
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        flat = finite.reshape(x.shape[0], -1) if x.ndim else finite.reshape(1, 1)
        bad = (~flat.all(dim=1)).nonzero().flatten().tolist()
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise ValueError(f"{name} has NaN or infinite values in samples {bad[:10]}{more}")
    return x


def check_data(name: str, x) -> torch.Tensor:
    """A non-empty, floating-point, finite batch: the data every function starts from."""
    check_floating_tensor(name, x)
    check_batch_nonempty(name, x)
    return check_finite_tensor(name, x)


def check_labels(name: str, labels, num_classes: int, *, count: int | None = None,
                 null_label: int | None = None, null_allowed: bool = False,
                 device=None) -> torch.Tensor:
    """Class labels: one integer class or a 1-D tensor of them, in 0..num_classes-1, returned as
    int64 on `device`; with `count`, one label is repeated for `count` samples and more must
    number exactly `count`. `null_label` ("no class") is accepted if `null_allowed`, else
    refused with its own message (guidance needs a class). The range is checked on the CPU
    only: on a GPU the check would wait for the device."""
    values = torch.as_tensor(labels, device=device)
    if values.dtype.is_floating_point or values.dtype == torch.bool or values.ndim > 1:
        raise ValueError(f"{name} must be an integer class or a 1-D tensor of them, "
                         f"got {_got(labels)}")
    values = values.long()
    if count is not None:
        if values.numel() == 1:
            values = values.reshape(1).expand(count)
        elif values.shape != (count,):
            raise ValueError(f"got {values.numel()} {name} for {count} samples")
    if values.device.type != "cpu" or not values.numel():
        return values
    if null_label is not None and not null_allowed and bool((values == null_label).any()):
        raise ValueError(f"{name} {null_label} is the null label ('no class'); a class in "
                         f"0..{num_classes - 1} is needed here")
    allowed_max = null_label if null_allowed and null_label is not None else num_classes - 1
    if int(values.min()) < 0 or int(values.max()) > allowed_max:
        also = f" or be the null label {null_label}" if allowed_max != num_classes - 1 else ""
        found = values.unique().tolist()
        shown = ", ".join(map(str, found[:10])) + (", ..." if len(found) > 10 else "")
        raise ValueError(f"{name} must lie in 0..{num_classes - 1}{also}, got {{{shown}}}")
    return values


def check_weights(name: str, weights, count: int) -> torch.Tensor:
    """`count` finite, non-negative weights, not all zero (e.g. a mixture's), returned in float64
    and normalised to sum to 1."""
    w = torch.as_tensor(weights, dtype=torch.float64)
    if w.shape != (count,):
        raise ValueError(f"{name} must hold {count} numbers (one per component), got shape "
                         f"{tuple(w.shape)}")
    got = w.tolist()[:10] + (["..."] if count > 10 else [])
    got = "[" + ", ".join(map(str, got)) + "]"
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"{name} must be finite, got {got}")
    if bool((w < 0).any()):
        raise ValueError(f"{name} must be non-negative, got {got}")
    total = w.sum()
    if not bool(total > 0):
        raise ValueError(f"{name} must not all be 0 (they are normalised to sum to 1), got {got}")
    if not bool(torch.isfinite(total)):
        raise ValueError(f"{name} sum to inf (they are normalised to sum to 1): rescale them, "
                         f"got {got}")
    return w / total


def _first(mask: torch.Tensor) -> int | None:
    """The index of the first True in a 1-D mask, None if none."""
    found = mask.nonzero().flatten()
    return int(found[0]) if found.numel() else None


def check_covariances(name: str, covs, rtol: float = 1e-5) -> torch.Tensor:
    """A batch (K, D, D) of symmetric positive definite matrices, returned in float64 and made
    exactly symmetric, (C + C^T) / 2. Symmetric means |C - C^T| <= rtol max |C| entrywise (float32
    arithmetic leaves a symmetric matrix this close); positive definite, that a Cholesky
    factorisation in float64 succeeds. The message names the first bad component."""
    covs = torch.as_tensor(covs, dtype=torch.float64)

    def shown(k):
        return f": {covs[k].tolist()}" if covs.shape[-1] <= 4 else ""

    k = _first(~torch.isfinite(covs).flatten(1).all(dim=1))
    if k is not None:
        raise ValueError(f"{name}[{k}] (component {k}) has NaN or infinite entries{shown(k)}")
    scale = covs.abs().amax(dim=(-2, -1))
    asymmetry = (covs - covs.transpose(-2, -1)).abs().amax(dim=(-2, -1))
    k = _first(asymmetry > rtol * scale)
    if k is not None:
        raise ValueError(f"{name}[{k}] (component {k}) must be symmetric, but C - C^T has entries "
                         f"up to {float(asymmetry[k]):.3g} for entries of C up to "
                         f"{float(scale[k]):.3g}{shown(k)}")
    covs = (covs + covs.transpose(-2, -1)) / 2
    k = _first(torch.linalg.cholesky_ex(covs).info != 0)
    if k is not None:
        smallest = float(torch.linalg.eigvalsh(covs[k])[0])
        raise ValueError(f"{name}[{k}] (component {k}) must be positive definite, but its "
                         f"smallest eigenvalue is {smallest:.3g}{shown(k)}")
    return covs


def check_score_output(score, x: torch.Tensor, name: str = "score_fn",
                       finite: bool = True) -> torch.Tensor:
    """What a score returned for x: a floating tensor of x's shape, finite (if `finite`)."""
    if not torch.is_tensor(score):
        raise TypeError(f"{name} must return a tensor of the shape of x {tuple(x.shape)}, "
                        f"got {_got(score)}")
    if tuple(score.shape) != tuple(x.shape):
        raise ValueError(f"{name} returned shape {tuple(score.shape)} for x of shape "
                         f"{tuple(x.shape)}; a score has the shape of x (no broadcasting)")
    if not score.is_floating_point():
        raise TypeError(f"{name} returned dtype {score.dtype}; a score is floating point")
    if finite and not bool(torch.isfinite(score).all()):
        raise ValueError(f"{name} returned NaN or infinite values for x of shape "
                         f"{tuple(x.shape)}")
    return score


class checked_score_fn:                                  # noqa: N801 - used like a function
    """score_fn(x, t) whose output's type, shape and dtype are checked (`check_score_output`)
    on the first call only, with no synchronisation; its values are the caller's to check, once,
    in the result."""

    def __init__(self, score_fn, name: str = "score_fn"):
        self.score_fn, self.name, self.checked = check_callable(name, score_fn), name, False

    def __call__(self, x, t):
        out = self.score_fn(x, t)
        if not self.checked:
            check_score_output(out, x, self.name, finite=False)
            self.checked = True
        return out


class FiniteSteps:
    """Counts on the device, without synchronising, how many leading steps gave finite values:
    `update(x)` after each step; `first_bad()` (one synchronisation) after the loop."""

    def __init__(self):
        self.alive = self.count = None

    def update(self, x: torch.Tensor) -> None:
        finite = torch.isfinite(x).all()
        if self.count is None:
            self.alive, self.count = finite, finite.long()
        else:
            self.alive = self.alive & finite
            self.count = self.count + self.alive

    def first_bad(self) -> int:
        return 0 if self.count is None else int(self.count)


def check_finite_result(what: str, x: torch.Tensor, steps: FiniteSteps | None = None,
                        times=None, hint: str = "") -> torch.Tensor:
    """Raise FloatingPointError if the result x of `what` is not finite (one synchronisation),
    naming the step (and time, from `times`) where the values first stopped being finite."""
    if bool(torch.isfinite(x).all()):
        return x
    where = ""
    if steps is not None:
        i = steps.first_bad()
        if times is None:
            where = f" at step {i}"
        elif i < len(times):
            where = f" at step {i} (t = {float(times[i]):.4g})"
        else:
            where = " in the final denoising step, after every step was finite"
    raise FloatingPointError(
        f"{what}: the samples became NaN or infinite{where}; the score_fn returned non-finite "
        f"values there, or the steps are too large for it (more steps, or check the score){hint}")


def check_eps(eps, sde, score_fn=None, default: float = 1e-3) -> float:
    """The time cut-off of a sampler or likelihood: `default` when None, raised to the model's
    training eps (`score_fn.trained_eps`, which `pretrained.model_from_checkpoint` sets) when that
    is larger. An eps below the model's training eps is refused, naming both: the net never saw
    those times, and its score there is an extrapolation."""
    trained = getattr(score_fn, "trained_eps", None)
    if eps is None:
        eps = default if trained is None else max(default, trained)
    eps = check_real("eps", eps, low=0.0, high=sde.T, low_open=True, high_open=True)
    if trained is not None and eps < trained * (1 - 1e-9):
        raise ValueError(f"eps={eps:g} is below eps={trained:g}, the smallest time this model was "
                         f"trained on: use eps >= {trained:g} (the default, eps=None)")
    return eps
