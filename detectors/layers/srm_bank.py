"""The 30 normalised SRM high-pass filters of steganalysis, as AIDE and PatchCraft use them.

After J. Fridrich and J. Kodovsky, "Rich Models for Steganalysis of Digital Images",
IEEE TIFS 2012; the list both AI-image detectors ship is ``all_normalized_hpf_list`` of
their ``srm_filter_kernel.py`` (github.com/shilinyan99/AIDE ``models/srm_filter_kernel.py``;
PatchCraft's ``networks/srm_filter_kernel.py``, the same 30 arrays in the same order).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _first_order() -> list[list[list[float]]]:
    """8 filters: -1 at the centre, +1 at one of the 8 neighbours (row-major order)."""
    out = []
    for r, c in ((0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)):
        k = [[0.0] * 3 for _ in range(3)]
        k[1][1], k[r][c] = -1.0, 1.0
        out.append(k)
    return out


def _third_order() -> list[list[list[float]]]:
    """8 filters / 3: (1, -3, 3, -1) along one of 8 directions through the centre."""
    out = []
    for dr, dc in ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1)):
        k = [[0.0] * 5 for _ in range(5)]
        k[2 + 2 * dr][2 + 2 * dc], k[2 + dr][2 + dc], k[2][2], k[2 - dr][2 - dc] = -1, 3, -3, 1
        out.append([[v / 3 for v in row] for row in k])
    return out


_SECOND_ORDER = (  # / 2
    ((1, 0, 0), (0, -2, 0), (0, 0, 1)),
    ((0, 1, 0), (0, -2, 0), (0, 1, 0)),
    ((0, 0, 1), (0, -2, 0), (1, 0, 0)),
    ((0, 0, 0), (1, -2, 1), (0, 0, 0)),
)
_EDGE_3 = (  # / 4
    ((-1, 2, -1), (2, -4, 2), (0, 0, 0)),
    ((0, 2, -1), (0, -4, 2), (0, 2, -1)),
    ((0, 0, 0), (2, -4, 2), (-1, 2, -1)),
    ((-1, 2, 0), (2, -4, 0), (-1, 2, 0)),
)
_SQUARE_5 = (
    (-1, 2, -2, 2, -1),
    (2, -6, 8, -6, 2),
    (-2, 8, -12, 8, -2),
    (2, -6, 8, -6, 2),
    (-1, 2, -2, 2, -1),
)


def srm_filters() -> torch.Tensor:
    """The 30 normalised SRM high-pass filters, 3 x 3 ones zero-padded to 5 x 5: (30, 5, 5).

    In the reference's order: 8 first-order, 4 second-order (/2), 8 third-order (/3),
    4 3 x 3 edges (/4), 4 5 x 5 edges (/12: the top three rows of the 5 x 5 square,
    rotated), the 3 x 3 square (/4), the 5 x 5 square (/12).
    """

    def pad(k: torch.Tensor) -> torch.Tensor:
        return F.pad(k, (1, 1, 1, 1))

    square5 = torch.tensor(_SQUARE_5, dtype=torch.float32)
    edge5_top = torch.zeros(5, 5)
    edge5_top[:3] = square5[:3]
    edge5 = [edge5_top, edge5_top.rot90(-1), edge5_top.rot90(2), edge5_top.rot90(1)]
    square3 = torch.tensor(((-1, 2, -1), (2, -4, 2), (-1, 2, -1)), dtype=torch.float32)
    bank = [pad(torch.tensor(k, dtype=torch.float32)) for k in _first_order()]
    bank += [pad(torch.tensor(k, dtype=torch.float32) / 2) for k in _SECOND_ORDER]
    bank += [torch.tensor(k, dtype=torch.float32) for k in _third_order()]
    bank += [pad(torch.tensor(k, dtype=torch.float32) / 4) for k in _EDGE_3]
    bank += [k / 12 for k in edge5] + [pad(square3 / 4), square5 / 12]
    return torch.stack(bank)
