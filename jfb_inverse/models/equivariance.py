"""Group averaging of the regulariser over quarter-turns and flips (exact on any image shape).

``symmetrize(D, group)(v) = mean_g g^{-1} D(g v)`` is equivariant to the group whatever ``D`` is
(Reynolds averaging; used inside plug-and-play iterations by Terris et al., "Equivariant
plug-and-play image reconstruction", CVPR 2024). The network is trained on dihedrally augmented
patches, so the average changes little in expectation but removes the orientation bias that a
finite training run leaves; it costs one application of ``D`` per group element.

Why not ``deepinv.transform.Rotate(multiples=90).symmetrize``: it rotates on the image's own canvas
(a torchvision rotation), which crops a non-square image, so even the identity does not come back
unchanged; ``torch.rot90`` swaps the height and width instead, which a fully convolutional ``D``
accepts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from jfb_inverse.problems.config import Equivariance

#: ``(quarter turns, flip)`` of each group element; the flip (of the width) is applied after the turn.
GROUPS: dict[str, tuple[tuple[int, bool], ...]] = {
    "none": ((0, False),),
    "rotations": tuple((k, False) for k in range(4)),
    "dihedral": tuple((k, f) for f in (False, True) for k in range(4)),
}


def _apply(v: Tensor, turns: int, flip: bool) -> Tensor:
    v = torch.rot90(v, turns, dims=(-2, -1)) if turns else v
    return v.flip(-1) if flip else v


def _invert(v: Tensor, turns: int, flip: bool) -> Tensor:
    v = v.flip(-1) if flip else v
    return torch.rot90(v, -turns, dims=(-2, -1)) if turns else v


def group_elements(group: Equivariance) -> tuple[tuple[int, bool], ...]:
    """The ``(quarter turns, flip)`` elements of ``group``; a ValueError names the valid groups."""
    try:
        return GROUPS[group]
    except KeyError:
        raise ValueError(f"unknown equivariance {group!r}; choose one of {sorted(GROUPS)}") from None


def symmetrize(
    fn: Callable[..., Tensor], group: Equivariance, context: Tensor | None = None
) -> Callable[[Tensor], Tensor]:
    """``v -> mean over g of g^{-1} fn(g v)`` for the ``group`` (``"none"``: ``fn`` itself).

    With a ``context`` (a regulariser with input injection), ``fn`` is called as ``fn(v, context)``
    and the context is turned with ``v``: ``mean over g of g^{-1} fn(g v, g context)``.
    """
    elements = group_elements(group)
    if len(elements) == 1:
        return fn if context is None else (lambda v: fn(v, context))
    # Turned once per solve, not once per iteration: the context does not change.
    contexts = [() if context is None else (_apply(context, turns, flip),) for turns, flip in elements]

    def averaged(v: Tensor) -> Tensor:
        total: Tensor | None = None
        for (turns, flip), extra in zip(elements, contexts, strict=True):
            out = _invert(fn(_apply(v, turns, flip), *extra), turns, flip)
            total = out if total is None else total + out
        assert total is not None
        return total / len(elements)

    return averaged
