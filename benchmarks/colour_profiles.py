"""data.build's colour-profile conversion and pixel limit: accuracy and cost (BUILD.md, "Phone
photos"). Prints one JSON line:

- p3_levels_max / p3_levels_off_fraction: littlecms's 8-bit Display P3 -> sRGB transform
  (`build.srgb_transform`) against the colour math (`tests/icc_profiles.py`) over all 2^24
  colours;
- convert_ms_untagged / convert_ms_p3: `build.convert_image` of one 4032 x 3024 JPEG (quality 90)
  stored at a shorter side of 355, without and with a Display P3 profile, median of --repeats;
- huge_jpeg_s: a 16384 x 12288 JPEG (201 MP, over Pillow's 179 MP limit) stored at 473 x 355.

    taskset -c 1 python benchmarks/colour_profiles.py [--repeats 12]
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from msmt_tf.data import build  # pylint: disable=g-import-not-at-top,wrong-import-position
from tests import icc_profiles as icc  # pylint: disable=g-import-not-at-top,wrong-import-position


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=12)
  args = parser.parse_args()
  p3 = icc.rgb_profile("Display P3", icc.P3_PRIMARIES)
  result = {}
  transform, _ = build.srgb_transform(p3, "RGB")
  v = np.arange(256, dtype=np.uint8)
  every = np.stack(np.meshgrid(v, v, v, indexing="ij"), -1).reshape(4096, 4096, 3)
  got = np.asarray(build.to_srgb(Image.fromarray(every), transform, "RGB")).astype(np.int64)
  off = np.abs(got - icc.rgb_to_srgb(every, icc.P3_PRIMARIES))
  result.update(p3_levels_max=int(off.max()),
                p3_levels_off_fraction=round(float((off > 0).mean()), 5))
  rng = np.random.default_rng(0)
  small = rng.integers(0, 256, (378, 504, 3), dtype=np.uint8)
  with tempfile.TemporaryDirectory() as d:
    photo = Image.fromarray(small).resize((4032, 3024), Image.BILINEAR)
    photo.save(os.path.join(d, "untagged.jpg"), quality=90)
    photo.save(os.path.join(d, "p3.jpg"), quality=90, icc_profile=p3)
    for name in ("untagged", "p3"):
      times = []
      for _ in range(args.repeats):
        t = time.perf_counter()
        rec = build.convert_image(os.path.join(d, f"{name}.jpg"), f"{name}.jpg",
                                  os.path.join(d, "out"), max_short_side=355)
        times.append((time.perf_counter() - t) * 1000)
        assert rec["problem"] is None and rec["colour"] == ("Display P3" if name == "p3" else None)
      result[f"convert_ms_{name}"] = round(float(np.median(times)), 1)
    Image.fromarray(small[:96, :128]).resize((16384, 12288), Image.BILINEAR).save(
        os.path.join(d, "huge.jpg"), quality=85)
    t = time.perf_counter()
    rec = build.convert_image(os.path.join(d, "huge.jpg"), "huge.jpg", os.path.join(d, "out"),
                              max_short_side=355)
    result["huge_jpeg_s"] = round(time.perf_counter() - t, 2)
    assert rec["problem"] is None and (rec["stored_width"], rec["stored_height"]) == (473, 355)
  print(json.dumps(result))


if __name__ == "__main__":
  main()
