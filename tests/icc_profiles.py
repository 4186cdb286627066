"""ICC v2 display profiles written from their definition (no profile file ships here): RGB
matrix/TRC profiles (Display P3, sRGB under another name) and a grey TRC profile, with the colour
math to check a conversion against (`rgb_to_srgb`, `grey_to_srgb`).

A matrix/TRC profile holds the primaries' XYZ, adapted to the D50 connection space (Bradford),
as the columns of linear RGB -> XYZ, and one tone curve per channel (ICC.1:2001-04, 6.3.1.2).
"""

import struct

import numpy as np

D50 = np.array([0.9642, 1.0, 0.8249])
D65_XY = (0.3127, 0.3290)
_BRADFORD = np.array([[0.8951, 0.2664, -0.1614],
                      [-0.7502, 1.7135, 0.0367],
                      [0.0389, -0.0685, 1.0296]])
SRGB_PRIMARIES = ((0.64, 0.33), (0.30, 0.60), (0.15, 0.06))
P3_PRIMARIES = ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060))


def _xyz(xy):
  x, y = xy
  return np.array([x / y, 1.0, (1 - x - y) / y])


def rgb_to_xyz(primaries, white_xy=D65_XY):
  """Linear RGB -> XYZ (white Y = 1) of an RGB space."""
  p = np.stack([_xyz(xy) for xy in primaries], axis=1)
  return p * np.linalg.solve(p, _xyz(white_xy))


def _to_d50(matrix, white_xy=D65_XY):
  cone = _BRADFORD @ _xyz(white_xy), _BRADFORD @ D50
  adapt = np.linalg.inv(_BRADFORD) @ np.diag(cone[1] / cone[0]) @ _BRADFORD
  return adapt @ matrix


def srgb_decode(v):
  v = np.asarray(v, np.float64)
  return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def srgb_encode(v):
  v = np.clip(np.asarray(v, np.float64), 0.0, 1.0)
  return np.where(v <= 0.0031308, v * 12.92, 1.055 * v ** (1 / 2.4) - 0.055)


def rgb_to_srgb(levels, primaries):
  """8-bit values of an RGB space with the sRGB tone curve -> 8-bit sRGB (relative colorimetric:
  both spaces are D65, so no adaptation; out-of-gamut values clipped)."""
  lin = srgb_decode(np.asarray(levels, np.float64) / 255.0)
  m = np.linalg.solve(rgb_to_xyz(SRGB_PRIMARIES), rgb_to_xyz(primaries))
  return np.rint(srgb_encode(lin @ m.T) * 255.0).astype(np.int64)


def grey_to_srgb(levels, gamma):
  """8-bit grey with a pure gamma tone curve -> 8-bit sRGB grey (the same white)."""
  return np.rint(srgb_encode((np.asarray(levels, np.float64) / 255.0) ** gamma) * 255.0).astype(
      np.int64)


def _s15(v):
  return struct.pack(">i", int(round(v * 65536)))


def _xyz_tag(xyz):
  return b"XYZ \0\0\0\0" + b"".join(_s15(v) for v in xyz)


def _desc_tag(text):
  ascii_ = text.encode("ascii") + b"\0"
  return (b"desc\0\0\0\0" + struct.pack(">I", len(ascii_)) + ascii_ +
          struct.pack(">II", 0, 0) + struct.pack(">HB", 0, 0) + b"\0" * 67)


def _srgb_curve():
  # parametricCurveType, function 3: Y = (aX + b)^g for X >= d, else cX. A v4 type in this v2
  # profile (littlecms reads it in either): the exact curve, where a v2 `curv` table would add
  # its interpolation to what the test measures.
  params = (2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045)
  return b"para\0\0\0\0" + struct.pack(">HH", 3, 0) + b"".join(_s15(v) for v in params)


def _gamma_curve(gamma):
  return b"curv\0\0\0\0" + struct.pack(">IH", 1, int(round(gamma * 256))) + b"\0\0"


def _profile(space, tags):
  table, data = [], b""
  offset = 128 + 4 + 12 * len(tags)
  for sig, body in tags:  # each tag's data starts on 4 bytes; its size leaves the padding out
    table.append(struct.pack(">4sII", sig, offset + len(data), len(body)))
    data += body + b"\0" * (-len(body) % 4)
  size = offset + len(data)
  header = (struct.pack(">I", size) + b"\0" * 4 + struct.pack(">I", 0x02100000) + b"mntr" +
            space + b"XYZ " + struct.pack(">6H", 2026, 1, 1, 0, 0, 0) + b"acsp" + b"\0" * 24 +
            struct.pack(">I", 0) + b"".join(_s15(v) for v in D50) + b"\0" * 48)
  assert len(header) == 128
  return header + struct.pack(">I", len(tags)) + b"".join(table) + data


def rgb_profile(name, primaries):
  """An RGB display profile of these primaries, D65 white and the sRGB tone curve."""
  m = _to_d50(rgb_to_xyz(primaries))
  curve = _srgb_curve()
  return _profile(b"RGB ", [
      (b"desc", _desc_tag(name)), (b"wtpt", _xyz_tag(D50)),
      (b"rXYZ", _xyz_tag(m[:, 0])), (b"gXYZ", _xyz_tag(m[:, 1])), (b"bXYZ", _xyz_tag(m[:, 2])),
      (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve),
      (b"cprt", b"text\0\0\0\0no copyright, test data\0")])


def grey_profile(name, gamma):
  """A grey display profile with a pure gamma tone curve."""
  return _profile(b"GRAY", [(b"desc", _desc_tag(name)), (b"wtpt", _xyz_tag(D50)),
                            (b"kTRC", _gamma_curve(gamma)),
                            (b"cprt", b"text\0\0\0\0no copyright, test data\0")])
