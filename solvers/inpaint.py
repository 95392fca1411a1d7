"""Inpainting / imputation with any sampler (Song et al. 2021, section 5 and appendix I.2).

Given a mask Omega (True where x is known) and the known values y = x_Omega, after every step to
grid time t_k the known part of the state is replaced by a fresh draw of its forward marginal,
    x_Omega(t_k) = m(t_k) y + s(t_k) z,   z ~ N(0, I),
while the unknown part follows the sampler's reverse dynamics under the joint score; after the
final denoising step the known part is y itself. This approximates sampling p(x_{not Omega} | y)
by p_t(x_{not Omega}(t) | x_Omega(t)) at each t; it is exact when the two parts are independent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from sde_diffusion import checks


@dataclass(frozen=True)
class Known:
    """The known part: ``mask`` (bool, broadcastable to the samples), values ``y`` and the marginal
    tables m(t_k), s(t_k) on the grid, all on the samples' device and dtype."""

    mask: torch.Tensor
    y: torch.Tensor
    m: torch.Tensor
    s: torch.Tensor

    def hold(self, x: torch.Tensor, k: int, z: torch.Tensor) -> torch.Tensor:
        """x with its known part replaced by m(t_k) y + s(t_k) z."""
        return torch.where(self.mask, self.m[k] * self.y + self.s[k] * z, x)

    def final(self, x: torch.Tensor) -> torch.Tensor:
        """x with its known part set to y."""
        return torch.where(self.mask, self.y, x)


def known(inpaint, shape: Sequence[int], marginals: tuple[torch.Tensor, torch.Tensor],
          device, dtype: torch.dtype) -> Known:
    """Validate ``inpaint = (mask, y)``: mask of bools or 0/1 values broadcastable to ``shape``,
    y a finite tensor of ``shape`` (its values outside the mask are ignored)."""
    if not isinstance(inpaint, (tuple, list)) or len(inpaint) != 2:
        raise TypeError("inpaint must be a pair (mask, x_known) of tensors.")
    mask, y = inpaint
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"inpaint mask must be a tensor, got {type(mask).__name__}.")
    y = checks.float_tensor("inpaint x_known", y)
    if tuple(y.shape) != tuple(shape):
        raise ValueError(f"inpaint x_known must have the samples' shape {tuple(shape)}, got {tuple(y.shape)}.")
    try:
        torch.broadcast_shapes(mask.shape, tuple(shape))
    except RuntimeError:
        raise ValueError(f"inpaint mask of shape {tuple(mask.shape)} does not broadcast to {tuple(shape)}.") from None
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("inpaint mask must hold booleans or 0/1 values (1 = known).")
        mask = mask != 0
    m, s = marginals
    return Known(mask.to(device), y.to(device=device, dtype=dtype), checks.upload(m, device, dtype),
                 checks.upload(s, device, dtype))
