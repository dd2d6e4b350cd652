"""What the demo world is made of: land-cover classes, roof materials and wall colours.

Surfaces are described once, as reflectance in the eight WorldView-3 bands (Coastal, Blue,
Green, Yellow, Red, RedEdge, NIR1, NIR2). The overhead rasters use the spectra directly; the
ground photos take their colour from the same spectra (bands 5, 3, 2 as R, G, B), so a red roof
or a lawn has the same colour seen from above and from the street.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

BAND_NAMES = ("Coastal", "Blue", "Green", "Yellow", "Red", "RedEdge", "NIR1", "NIR2")


class Cover(IntEnum):
    """Land-cover classes of the demo world (0 is kept for 'nothing')."""

    ROAD = 1
    SIDEWALK = 2
    ROOF = 3
    GRASS = 4
    WATER = 5
    PAVED = 6
    SOIL = 7
    MARKING = 8


# Reflectance per class, indexed by Cover value (row 0 unused). ROOF is a placeholder: roofs
# take their spectrum from ROOFS. Vegetation is dark in red, bright in NIR; water is dark in NIR.
COVER_SPECTRA = np.array(
    [
        [0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00],
        [0.070, 0.075, 0.080, 0.085, 0.090, 0.095, 0.100, 0.105],  # road: asphalt
        [0.200, 0.220, 0.240, 0.250, 0.260, 0.270, 0.280, 0.290],  # sidewalk: concrete
        [0.180, 0.190, 0.200, 0.210, 0.220, 0.230, 0.240, 0.250],  # roof placeholder
        [0.030, 0.040, 0.090, 0.070, 0.050, 0.200, 0.420, 0.450],  # grass
        [0.060, 0.070, 0.065, 0.045, 0.030, 0.020, 0.012, 0.008],  # water
        [0.220, 0.250, 0.280, 0.300, 0.310, 0.320, 0.330, 0.340],  # paved plaza / parking
        [0.080, 0.100, 0.140, 0.180, 0.210, 0.240, 0.270, 0.290],  # bare soil
        [0.550, 0.580, 0.600, 0.600, 0.600, 0.600, 0.600, 0.600],  # road paint
    ],
    dtype=np.float32,
)

TREE_SPECTRUM = np.array([0.025, 0.030, 0.070, 0.050, 0.035, 0.160, 0.360, 0.380], dtype=np.float32)

# Roof materials; ROOF_PITCHED marks those used on pitched roofs (tiles, slate).
ROOFS = np.array(
    [
        [0.060, 0.070, 0.090, 0.150, 0.250, 0.280, 0.300, 0.310],  # red clay tile
        [0.180, 0.200, 0.215, 0.225, 0.235, 0.245, 0.255, 0.265],  # grey concrete
        [0.060, 0.065, 0.070, 0.072, 0.075, 0.078, 0.080, 0.082],  # dark bitumen
        [0.480, 0.520, 0.540, 0.545, 0.550, 0.550, 0.545, 0.540],  # white membrane
        [0.050, 0.070, 0.140, 0.100, 0.070, 0.080, 0.100, 0.110],  # green metal
        [0.100, 0.140, 0.120, 0.080, 0.060, 0.060, 0.070, 0.070],  # blue metal
        [0.150, 0.165, 0.185, 0.200, 0.210, 0.220, 0.230, 0.240],  # gravel
        [0.090, 0.095, 0.100, 0.105, 0.110, 0.115, 0.120, 0.125],  # dark slate
    ],
    dtype=np.float32,
)
ROOF_PITCHED = np.array([True, False, False, False, False, False, False, True])

# Facade colours (linear RGB reflectance): brick, cream plaster, white, grey concrete, ochre,
# pale blue glass, terracotta, sandstone.
WALLS = np.array(
    [
        [0.30, 0.12, 0.08],
        [0.62, 0.56, 0.42],
        [0.72, 0.72, 0.70],
        [0.38, 0.38, 0.37],
        [0.60, 0.42, 0.18],
        [0.25, 0.34, 0.40],
        [0.50, 0.24, 0.14],
        [0.55, 0.47, 0.33],
    ],
    dtype=np.float32,
)

# Additive path radiance (haze): strongest in the short wavelengths, as in top-of-atmosphere data.
HAZE = np.array([0.060, 0.045, 0.030, 0.022, 0.016, 0.012, 0.008, 0.006], dtype=np.float32)

# Scale from reflectance to 11-bit digital numbers (WorldView-3 PS-MS values reach ~2047).
DN_PER_REFLECTANCE = 1900.0
DN_MAX = 2047


def rgb_of(spectra: np.ndarray) -> np.ndarray:
    """Linear RGB reflectance (bands 5, 3, 2) of spectra with eight bands on the last axis."""
    return spectra[..., [4, 2, 1]]


def to_srgb(linear: np.ndarray, exposure: float = 2.4) -> np.ndarray:
    """Linear reflectance to 8-bit sRGB-like values (exposure, then a 1/2.2 gamma)."""
    return np.clip(np.clip(linear * exposure, 0, 1) ** (1 / 2.2) * 255 + 0.5, 0, 255).astype(np.uint8)
