"""Tests of python -m msmt_tf.data.build: an ImageFolder-style folder -> a `folder` dataset.

The source folder is generated here: both metadata formats (JSONL with caption lists and a class
column; CSV with a BOM, CRLF line ends, repeated rows, a quoted multi-line caption), images as
people have them (upper-case .JPG, EXIF-rotated JPEG, grayscale, CMYK, RGBA and 16-bit PNG,
animated GIF, WebP, a unicode file name, subfolders) and one bad row or file of each kind.
"""

import hashlib
import io
import json
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np
from PIL import Image
from PIL import ImageOps
import pytest

from msmt_tf import image_utils
from msmt_tf.data import build as build_lib
from msmt_tf.data import datasets
from msmt_tf.data import inspect as inspect_lib
from tests import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
S = 64  # the smallest size the build accepts


def _img(colour, size=(S, S), mode="RGB"):
  im = Image.new("RGB", size, colour)
  # A second colour in the top-left quarter, so orientation and crops are visible.
  im.paste((255 - colour[0], 255 - colour[1], 255 - colour[2]),
           (0, 0, size[0] // 2, size[1] // 2))
  return im.convert(mode) if mode != "RGB" else im


def _save(path, im, fmt, **kw):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  im.save(path, format=fmt, **kw)


def make_source(root):
  """Writes the quirky source folder; returns what the tests check against."""
  a, b = os.path.join(root, "part_a"), os.path.join(root, "part_b")
  _save(f"{a}/imgs/IMG_0001.JPG", _img((200, 30, 30)), "JPEG", quality=90)
  # EXIF orientation 6 (rotate 90 cw to view): stored 80x64 with the dark quarter top-left;
  # upright it is 64x80 with that quarter at the top right.
  rot = _img((30, 200, 30), size=(80, 64))
  exif = Image.Exif()
  exif[0x0112] = 6
  _save(f"{a}/imgs/phone.jpg", rot, "JPEG", quality=95, exif=exif.tobytes())
  _save(f"{a}/imgs/gray.jpg", _img((90, 90, 90), mode="L"), "JPEG")
  _save(f"{a}/imgs/cmyk.jpg", _img((30, 30, 200)).convert("CMYK"), "JPEG")
  rgba = Image.new("RGBA", (S, S), (0, 0, 255, 255))
  rgba.paste((0, 0, 0, 0), (0, 0, S, S // 2))  # top half transparent -> white
  _save(f"{a}/imgs/alpha.png", rgba, "PNG")
  frames = [Image.new("RGB", (S, S), c).convert("P") for c in ((255, 0, 0), (0, 0, 255))]
  os.makedirs(f"{a}/imgs", exist_ok=True)
  frames[0].save(f"{a}/imgs/anim.gif", save_all=True, append_images=frames[1:], duration=100)
  _save(f"{a}/imgs/photo.webp", _img((200, 200, 30)), "WEBP", lossless=True)
  deep = Image.fromarray(np.full((S, S), 32896, np.uint16))  # 32896 / 257 = 128
  _save(f"{a}/imgs/deep.png", deep, "PNG")
  _save(f"{a}/imgs/plain.png", _img((120, 60, 200)), "PNG")
  _save(f"{a}/imgs/caf\u00e9.png", _img((10, 120, 120)), "PNG")
  _save(f"{a}/imgs/sub/dir/nested.jpg", _img((160, 100, 40)), "JPEG")
  # Bad files.
  buf = io.BytesIO()
  _img((50, 50, 50), size=(96, 96)).save(buf, format="JPEG")
  os.makedirs(f"{a}/bad", exist_ok=True)
  with open(f"{a}/bad/truncated.jpg", "wb") as f:
    f.write(buf.getvalue()[:len(buf.getvalue()) // 3])
  _save(f"{a}/bad/tiny.png", _img((1, 2, 3), size=(40, 100)), "PNG")
  rows = [
      {"file_name": "imgs/IMG_0001.JPG", "text": ["a red square with a cyan corner",
                                                  "red box, cyan corner"], "species": "sparrow"},
      {"file_name": "imgs/phone.jpg", "text": "a green photo taken on a phone", "species": "finch"},
      {"file_name": "imgs/gray.jpg", "text": "a gray picture", "species": "crow"},
      {"file_name": "imgs/gray.jpg", "text": "grey tones only", "species": "crow"},
      {"file_name": "imgs/cmyk.jpg", "text": "a blue print in cmyk", "species": "finch"},
      {"file_name": "imgs/alpha.png", "text": "a blue half under a white half", "species": "crow"},
      {"file_name": "imgs/anim.gif", "text": "a red frame then a blue frame", "species": "sparrow"},
      {"file_name": "imgs/photo.webp", "text": "a yellow web picture", "species": "finch"},
      {"file_name": "imgs/deep.png", "text": "sixteen bit gray", "species": "crow"},
      {"file_name": "imgs/plain.png", "text": "a purple png", "species": "sparrow"},
      {"file_name": "imgs/caf\u00e9.png", "text": "un caf\u00e9 cr\u00e8me \u2615 teal", "species": "finch"},
      {"file_name": "imgs\\sub\\dir\\nested.jpg", "text": "an orange nested image",
       "species": "crow"},
      # One bad row of each kind (the tests look for each line number).
      {"file_name": "imgs/plain.png", "text": "", "species": "sparrow"},              # 14 empty
      {"file_name": "imgs/plain.png", "text": "!!! ... ???", "species": "sparrow"},   # 15 no word
      {"file_name": "imgs/missing.jpg", "text": "not there", "species": "crow"},     # 16 missing
      {"file_name": "bad/truncated.jpg", "text": "half a file", "species": "crow"},  # 17 broken
      {"file_name": "bad/tiny.png", "text": "a tiny image", "species": "crow"},      # 18 small
  ]
  os.makedirs(a, exist_ok=True)
  with open(f"{a}/metadata.jsonl", "w", encoding="utf8", newline="\n") as f:
    f.write("\n".join(json.dumps(r, ensure_ascii=False) for r in rows[:12]) + "\n\n")
    f.write("\n".join(json.dumps(r, ensure_ascii=False) for r in rows[12:]) + "\n")
  colours = [(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0), (0, 250, 250), (250, 0, 250)]
  for i, c in enumerate(colours):
    _save(f"{b}/k{i}.jpg", _img(c, size=(72, 64)), "JPEG")
  _save(f"{b}/orphan.jpg", _img((9, 9, 9)), "JPEG")  # no row lists it
  lines = [b"file_name,caption,species"]
  for i in range(6):
    for j in range(1 + i % 3):  # 1, 2 or 3 captions per image as repeated rows
      lines.append(f"k{i}.jpg,colour number {i} variant {j},{'crow' if i % 2 else 'finch'}".encode())
  lines[2] = b'k1.jpg,"a caption that spans\r\ntwo lines, with a comma",crow'
  lines.append(b'k5.jpg,"[""json list one"", ""json list two""]",crow')
  lines.append(b"k0.jpg,colour number 0 variant 0,finch")  # the same row twice: kept once
  next_line = lambda: 1 + sum(line.count(b"\n") + 1 for line in lines)  # physical line
  bad_utf8_line = next_line()
  lines.append(b"k4.jpg,caf\xe9 latin-1 bytes,finch")
  dup_line = next_line()
  lines.append("../part_a/imgs/IMG_0001.JPG,listed twice,sparrow".encode())
  with open(f"{b}/metadata.csv", "wb") as f:
    f.write(b"\xef\xbb\xbf" + b"\r\n".join(lines) + b"\r\n")
  # 17 usable images (11 + 6) with 13 + 14 captions; 19 image files are decoded (+ 2 bad).
  return dict(good=17, captions=27, decoded=19, bad_utf8_line=bad_utf8_line, dup_line=dup_line)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  root = tmp_path_factory.mktemp("source")
  info = make_source(str(root))
  return dict(info, root=str(root))


def _build(src, out, *extra, **kw):
  kw.setdefault("class_column", "species")
  kw.setdefault("test_fraction", 0.2)
  kw.setdefault("progress", False)
  return build_lib.build(src, out, text_column=kw.pop("text_column", "text"), **kw)


EXPECTED_PROBLEMS = [
    ("part_a/metadata.jsonl:14: imgs/plain.png:", "empty"),
    ("part_a/metadata.jsonl:15: imgs/plain.png:", "has no word left after tokenization"),
    ("part_a/metadata.jsonl:16: imgs/missing.jpg:", "file listed but missing"),
    ("part_a/metadata.jsonl:17: bad/truncated.jpg:", "unreadable or truncated image"),
    ("part_a/metadata.jsonl:18: bad/tiny.png:", "image is 40x100 px; images need at least 64 px"),
    ("part_b/orphan.jpg:", "image without captions"),
]


def _check_problems(problems, info):
  text = "\n".join(problems)
  for where, what in EXPECTED_PROBLEMS + [
      (f"part_b/metadata.csv:{info['bad_utf8_line']}: k4.jpg:", "not valid UTF-8 (bytes \\xe9)"),
      (f"part_b/metadata.csv:{info['dup_line']}: ../part_a/imgs/IMG_0001.JPG:",
       "duplicate file name: the same file is already listed as 'imgs/IMG_0001.JPG' at "
       "part_a/metadata.jsonl:1")]:
    assert any(p.startswith(where) and what in p for p in problems), (where, what, text)
  assert len(problems) == 8, text


@pytest.fixture(scope="module")
def built(source, tmp_path_factory):
  """The dataset, built with --skip_bad through the command line."""
  out = os.path.join(str(tmp_path_factory.mktemp("data")), "mine")
  cmd = [sys.executable, "-m", "msmt_tf.data.build", f"--source={source['root']}",
         f"--out={out}", "--text_column=text", "--class_column=species", "--test_fraction=0.2",
         "--skip_bad", "--workers=2"]
  # part_b names its caption column "caption": the build must say so and stop.
  res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
  assert res.returncode == 1
  assert "part_b/metadata.csv: no column 'text'; pass --text_column (columns: caption, species)" \
      in res.stderr
  assert not os.path.exists(out)
  with open(os.path.join(source["root"], "part_b", "metadata.csv"), "rb") as f:
    csv_bytes = f.read()
  fixed = csv_bytes.replace(b"file_name,caption,species", b"file_name,text,species", 1)
  with open(os.path.join(source["root"], "part_b", "metadata.csv"), "wb") as f:
    f.write(fixed)
  res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
  assert res.returncode == 0, res.stderr[-3000:]
  assert "note: 1 caption(s) repeated for the same image were kept once" in res.stdout
  assert ("note: 1 caption(s) have letters outside ASCII, which AttnGAN's tokenizer drops (2 "
          "word(s): 'café' -> 'caf', 'crème' -> 'crme')") in res.stdout
  return dict(out=out, stdout=res.stdout, stderr=res.stderr)


def test_sigterm_stops_the_build_command_as_ctrl_c_does(source, built, tmp_path):
  # SIGTERM (Slurm's time limit, `kill`, `docker stop`) in the middle of the images: the message
  # and the staged images of Ctrl-C, exit status 143 (128 + SIGTERM, as a shell reports it),
  # and the same command finishes from them. The signal is sent from inside the third image's
  # conversion (one worker: this process), so the moment is the same on every machine.
  out = str(tmp_path / "my birds" / "mine")  # a space: the printed next command is quoted
  script = (
      "import os, runpy, signal, sys\n"
      "from msmt_tf import image_utils\n"
      "to_rgb, calls = image_utils.to_rgb, []\n"
      "def stopped(*a, **k):\n"
      "  calls.append(1)\n"
      "  if len(calls) == 3:\n"
      "    os.kill(os.getpid(), signal.SIGTERM)\n"
      "  return to_rgb(*a, **k)\n"
      "image_utils.to_rgb = stopped\n"
      "sys.argv = ['build'] + sys.argv[1:]\n"
      "runpy.run_module('msmt_tf.data.build', run_name='__main__', alter_sys=True)\n")
  cmd = [f"--source={source['root']}", f"--out={out}", "--text_column=text",
         "--class_column=species", "--test_fraction=0.2", "--skip_bad", "--workers=1"]
  res = subprocess.run([sys.executable, "-c", script, *cmd], cwd=REPO, capture_output=True,
                       text=True)
  assert res.returncode == 143, res.stderr[-3000:]
  assert res.stderr.strip().endswith("stopped by SIGTERM: nothing was written to --out; run the "
                                     "same command again to resume")
  assert "Traceback" not in res.stderr and not os.path.exists(out)
  # With worker processes (forked, so they inherit the handler): the parent stops them and says
  # so, and no worker, nor the pool's thread, prints a traceback. The signal comes while the
  # parent waits for the third result, as Ctrl-C does. Slow workers keep futures pending, and a
  # slow kill() (or terminate()) lets the pool's thread find its workers gone before the parent
  # goes on: with a pending future cancelled (what `Executor.map` does when it is left), Python
  # 3.11's thread raised InvalidStateError there (10 runs in 10 before the fix).
  pooled = (
      "import concurrent.futures as cf, multiprocessing.process as mpp, os, runpy, signal, sys\n"
      "import time\n"
      "from msmt_tf import image_utils\n"
      "real_result, calls = cf.Future.result, []\n"
      "def stopped_result(self, *a, **k):\n"
      "  calls.append(1)\n"
      "  if len(calls) == 3:\n"
      "    os.kill(os.getpid(), signal.SIGTERM)\n"
      "  return real_result(self, *a, **k)\n"
      "cf.Future.result = stopped_result\n"
      "def slowly(stop):\n"
      "  def slow(self):\n"
      "    stop(self)\n"
      "    time.sleep(0.5)\n"
      "  return slow\n"
      "mpp.BaseProcess.kill = slowly(mpp.BaseProcess.kill)\n"
      "mpp.BaseProcess.terminate = slowly(mpp.BaseProcess.terminate)\n"
      "to_rgb = image_utils.to_rgb\n"
      "def slow_rgb(*a, **k):\n"
      "  time.sleep(0.2)\n"
      "  return to_rgb(*a, **k)\n"
      "image_utils.to_rgb = slow_rgb\n"
      "sys.argv = ['build'] + sys.argv[1:]\n"
      "runpy.run_module('msmt_tf.data.build', run_name='__main__', alter_sys=True)\n")
  res = subprocess.run([sys.executable, "-c", pooled, *cmd[:-1], "--workers=2"], cwd=REPO,
                       capture_output=True, text=True)
  assert res.returncode == 143, res.stderr[-3000:]
  assert "Traceback" not in res.stderr, res.stderr[-3000:]
  assert res.stderr.strip().endswith("stopped by SIGTERM: nothing was written to --out; run the "
                                     "same command again to resume")
  res = subprocess.run([sys.executable, "-m", "msmt_tf.data.build", *cmd], cwd=REPO,
                       capture_output=True, text=True)
  assert res.returncode == 0, res.stderr[-3000:]
  reused = re.search(r"\(1 workers\), (\d+) reused from an interrupted build", res.stdout)
  assert reused and int(reused.group(1)) >= 2, res.stdout  # the images of the stopped runs
  # The next command pastes as it is, the space in the path quoted.
  line = [l for l in res.stdout.splitlines() if l.startswith("next: ")][0]
  assert shlex.split(line)[4] == f"--flagfile={out}{os.sep}mine.cfg", line


def test_linked_split_folders_are_read_and_a_link_loop_is_walked_once(tmp_path):
  # train/ and test/ are links to folders elsewhere (a large image folder linked into the
  # dataset's source): their metadata and images are found; a link back up is not a loop.
  rng = np.random.default_rng(0)
  for split, count in (("real_train", 4), ("real_test", 2)):
    folder = tmp_path / "elsewhere" / split
    folder.mkdir(parents=True)
    rows = []
    for i in range(count):
      Image.fromarray(rng.integers(0, 256, (72, 80, 3), dtype=np.uint8)).save(folder / f"{i}.png")
      rows.append(json.dumps({"file_name": f"{i}.png", "text": f"a small {split[5:]} bird {i}"}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
  src = tmp_path / "src"
  src.mkdir()
  (src / "train").symlink_to(tmp_path / "elsewhere" / "real_train")
  (src / "test").symlink_to(tmp_path / "elsewhere" / "real_test")
  (tmp_path / "elsewhere" / "real_train" / "up").symlink_to(src)  # a loop through the link
  summary = _build(str(src), str(tmp_path / "out"), class_column=None, test_fraction=None,
                   workers=1)
  assert (summary["train_images"], summary["test_images"]) == (4, 2)
  assert summary["split"]["method"] == "folders"
  assert summary["warnings"] == []  # the link back up is not a folder read twice
  # A second name for a folder already read is read once, and said.
  (src / "train_again").symlink_to(tmp_path / "elsewhere" / "real_train")
  summary = _build(str(src), str(tmp_path / "out2"), class_column=None, test_fraction=None,
                   workers=1)
  assert (summary["train_images"], summary["test_images"]) == (4, 2)
  assert summary["warnings"] == ["train_again/ leads to the folder already read as train/: its "
                                 "files are read once, as train/ (a split folder must be a "
                                 "folder of its own)"], summary["warnings"]


def test_a_column_missing_from_several_metadata_files_is_one_problem_each(source, built, tmp_path):
  with pytest.raises(build_lib.BuildError) as e:
    _build(source["root"], str(tmp_path / "x"), text_column="caption_text", workers=1)
  assert sorted(e.value.problems) == [
      "part_a/metadata.jsonl: no column 'caption_text'; pass --text_column (columns: species, "
      "text)",
      "part_b/metadata.csv: no column 'caption_text'; pass --text_column (columns: species, "
      "text)"], e.value.problems


def test_bad_rows_stop_the_build_naming_each(source, built, tmp_path):
  out = str(tmp_path / "strict")
  with pytest.raises(build_lib.BuildError) as e:
    _build(source["root"], out, workers=1)
  _check_problems(e.value.problems, source)
  assert not os.path.exists(out)  # no half dataset
  with open(str(tmp_path / "strict.problems.txt"), encoding="utf8") as f:
    assert f.read().splitlines() == e.value.problems
  assert os.path.isdir(str(tmp_path / ".strict.build"))  # kept for the next run
  # The hint counts the images stored (19 decoded, 2 of them unusable), not those decoded.
  stored = sum(len(files) for _, _, files in os.walk(str(tmp_path / ".strict.build" / "images")))
  assert stored == source["decoded"] - 2 == 17
  assert "the 17 images already converted are kept in" in e.value.hint


def test_skip_bad_writes_the_list_and_a_dataset_the_loader_reads(source, built):
  out = built["out"]
  with open(os.path.join(out, "skipped.txt"), encoding="utf8") as f:
    _check_problems(f.read().splitlines(), source)
  assert "8 problem(s), listed in" in built["stdout"]
  spec = datasets.read_spec_json(out)
  train = datasets.load_split(out, "folder", "train")
  test = datasets.load_split(out, "folder", "test")
  assert train.num_images + test.num_images == source["good"] == 17
  assert test.num_images == 3  # round(17 * 0.2)
  keys = set(train.keys) | set(test.keys)
  assert {"part_a/imgs/IMG_0001.JPG", "part_a/imgs/phone.jpg", "part_a/imgs/anim.gif.png",
          "part_a/imgs/photo.webp.png", "part_a/imgs/deep.png", "part_a/imgs/caf\u00e9.png",
          "part_a/imgs/sub/dir/nested.jpg", "part_b/k0.jpg", "part_b/k5.jpg"} <= keys
  # Captions round trip: repeated rows, lists (JSONL and a JSON list in a CSV cell), multi-line.
  by_key = {}
  for data in (train, test):
    for key, caps in zip(data.keys, data.captions):
      by_key[key] = [data.vocab.decode(c) for c in caps]
  assert by_key["part_a/imgs/IMG_0001.JPG"] == ["a red square with a cyan corner",
                                                 "red box cyan corner"]
  assert by_key["part_a/imgs/gray.jpg"] == ["a gray picture", "grey tones only"]
  assert by_key["part_a/imgs/plain.png"] == ["a purple png"]  # the bad rows are out
  assert by_key["part_a/imgs/caf\u00e9.png"] == ["un caf crme teal"]  # AttnGAN: ASCII only
  assert by_key["part_b/k1.jpg"] == ["a caption that spans two lines with a comma",
                                     "colour number 1 variant 1"]
  assert by_key["part_b/k4.jpg"] == ["colour number 4 variant 0", "colour number 4 variant 1"]
  assert by_key["part_b/k5.jpg"] == ["colour number 5 variant 0", "colour number 5 variant 1",
                                     "colour number 5 variant 2", "json list one",
                                     "json list two"]
  assert spec["captions_per_image"] == {"min": 1, "max": 5, "mean": round(27 / 17, 3)}
  assert spec["captions"] == source["captions"] == sum(len(c) for c in by_key.values())
  with open(os.path.join(out, "text", "part_b", "k5.jpg.txt"), encoding="utf8") as f:
    assert len(f.read().splitlines()) == 5
  # Classes from the column: names sorted, ids 1.., one per image.
  assert spec["class_names"] == ["crow", "finch", "sparrow"]
  cls = {k: c for d in (train, test) for k, c in zip(d.keys, d.class_ids.tolist())}
  assert cls["part_a/imgs/IMG_0001.JPG"] == 3 and cls["part_b/k0.jpg"] == 2
  assert cls["part_a/imgs/deep.png"] == 1
  # The flagfile: dataset path, vocabulary, words_num, the paper's dimensions.
  with open(os.path.join(out, "mine.cfg")) as f:
    cfg = f.read().splitlines()
  assert "--dataset=folder" in cfg and f"--data_dir={out}" in cfg
  assert f"--vocab_size={len(train.vocab)}" in cfg and spec["vocab_size"] == len(train.vocab)
  assert f"--words_num={spec['words_num_train']}" in cfg and "--channels=48" in cfg
  lengths = [len(c) for caps in train.captions for c in caps]
  assert spec["words_num_train"] == max(3, int(np.ceil(np.percentile(lengths, 75))))
  assert datasets.dataset_spec(out, "folder").words_num_eval == spec["words_num_eval"]
  # Intervals count steps: on 14 train images (1 step of batch 14 an epoch) the floors hold, not
  # a checkpoint every 5 steps and a sample grid every step; the comments say so.
  assert spec["train_images"] == 14 and "--batch_size=14" in cfg
  assert f"--checkpoint_every={build_lib.MIN_CHECKPOINT_STEPS}" in cfg
  assert f"--sample_every={build_lib.MIN_SAMPLE_STEPS}" in cfg
  assert ("# --checkpoint_every counts steps: 200, a floor for small datasets (5 epoch(s) = 5 "
          "step(s))") in cfg
  big = build_lib._flagfile("big", "/d", dict(  # pylint: disable=protected-access
      batch_size=20, train_images=8855, test_images=2933, source="/s", vocab_size=5000,
      captions_per_image=dict(min=10, max=10, mean=10), words_num_train=18,
      words_num_eval=25)).splitlines()
  assert "--checkpoint_every=2210" in big and "--sample_every=442" in big  # 5 epochs, 1 epoch
  assert "# --sample_every counts steps: 1 epoch(s) of 442 steps (batch 20)" in big


def test_images_are_rgb_upright_and_jpeg_kept_byte_for_byte(source, built):
  img = lambda key: os.path.join(built["out"], "images", *key.split("/"))
  src = lambda rel: os.path.join(source["root"], *rel.split("/"))
  with open(img("part_a/imgs/IMG_0001.JPG"), "rb") as f, \
      open(src("part_a/imgs/IMG_0001.JPG"), "rb") as g:
    assert f.read() == g.read()
  for key in ("part_a/imgs/phone.jpg", "part_a/imgs/gray.jpg", "part_a/imgs/cmyk.jpg",
              "part_a/imgs/alpha.png", "part_a/imgs/anim.gif.png", "part_a/imgs/photo.webp.png",
              "part_a/imgs/deep.png"):
    with Image.open(img(key)) as im:
      assert im.mode == "RGB", key
      assert im.format == ("JPEG" if key.endswith(".jpg") else "PNG"), key
  with Image.open(img("part_a/imgs/phone.jpg")) as im:
    assert im.size == (64, 80)  # EXIF orientation 6 applied
    a = np.asarray(im, np.int32)
    assert a[5, -5, 1] < 100 and a[-5, 5, 1] > 150  # the dark quarter moved to the top right
    assert 0x0112 not in im.getexif() or im.getexif()[0x0112] == 1
  with Image.open(img("part_a/imgs/alpha.png")) as im:
    a = np.asarray(im)
    assert (a[:S // 2] == 255).all() and (a[S // 2:] == (0, 0, 255)).all()  # over white
  with Image.open(img("part_a/imgs/anim.gif.png")) as im:
    assert np.asarray(im)[0, 0].tolist() == [255, 0, 0]  # the first frame
  with Image.open(img("part_a/imgs/deep.png")) as im:
    assert np.asarray(im)[0, 0].tolist() == [128, 128, 128]  # 16 bit scaled, not clipped
  with Image.open(img("part_a/imgs/photo.webp.png")) as im, \
      Image.open(src("part_a/imgs/photo.webp")) as ref:
    assert np.array_equal(np.asarray(im), np.asarray(ref.convert("RGB")))  # lossless
  with Image.open(img("part_a/imgs/cmyk.jpg")) as im:
    assert np.asarray(im)[-5, -5, 2] > 150  # still blue
  # Nothing else in images/: skipped files are not stored.
  stored = {os.path.relpath(os.path.join(d, f), os.path.join(built["out"], "images"))
            for d, _, fs in os.walk(os.path.join(built["out"], "images")) for f in fs}
  assert len(stored) == 17


def test_colour_profiles_other_than_srgb_are_converted_to_srgb(tmp_path):
  """Pixels tagged with an ICC profile other than sRGB (a phone's Display P3, a grey gamma 1.8)
  are stored as sRGB, checked against the colour math (`tests/icc_profiles.py`; littlecms's
  8-bit transform is within 1 level of it for all 2^24 P3 colours, 0.8% of them off by one);
  in every path (as it is, turned by EXIF, scaled down). A profile that is sRGB in effect under
  another name, and one that cannot be read, leave a JPEG kept byte for byte. The summary, the
  printed lines and dataset_spec.json count the conversions by profile name."""
  from tests import icc_profiles as icc  # pylint: disable=g-import-not-at-top
  from PIL import ImageCms  # pylint: disable=g-import-not-at-top
  src = tmp_path / "src"
  src.mkdir()
  p3 = icc.rgb_profile("Display P3", icc.P3_PRIMARIES)
  rng = np.random.default_rng(11)
  noise = rng.integers(0, 256, (72, 96, 3), dtype=np.uint8)
  flat = np.zeros((300, 200, 3), np.uint8)
  flat[:150], flat[150:] = (200, 60, 40), (30, 180, 90)  # two P3 colours, halves
  grey = rng.integers(0, 256, (70, 70), dtype=np.uint8)
  Image.fromarray(noise).save(src / "p3.png", icc_profile=p3)
  exif = Image.Exif()
  exif[0x0112] = 6  # stored on its side, as phones do
  Image.fromarray(flat).save(src / "phone.jpg", quality=95, icc_profile=p3, exif=exif.tobytes())
  Image.fromarray(flat).save(src / "big.jpg", quality=95, icc_profile=p3)
  Image.fromarray(grey).save(src / "grey.png", icc_profile=icc.grey_profile("Gray Gamma 1.8",
                                                                             1.8))
  Image.fromarray(noise).save(src / "alias.jpg", quality=90, icc_profile=icc.rgb_profile(
      "my monitor", icc.SRGB_PRIMARIES))
  Image.fromarray(noise).save(src / "srgb.jpg", quality=90, icc_profile=ImageCms.ImageCmsProfile(
      ImageCms.createProfile("sRGB")).tobytes())
  Image.fromarray(noise).save(src / "broken.jpg", quality=90, icc_profile=b"not a profile" * 9)
  names = ["p3.png", "phone.jpg", "big.jpg", "grey.png", "alias.jpg", "srgb.jpg", "broken.jpg"]
  with open(src / "metadata.jsonl", "w") as f:
    for i, n in enumerate(names):
      f.write(json.dumps({"file_name": n, "text": f"a photo number {i} of a red bird"}) + "\n")
  out = str(tmp_path / "data" / "colours")
  s = build_lib.build(str(src), out, text_column="text", progress=False, test_fraction=0.2,
                      max_short_side=100)
  stored = lambda n, ext="": np.asarray(Image.open(os.path.join(out, "images", n + ext)),
                                         np.int64)
  # Lossless source and store: the colour math within 1 level.
  got = stored("p3.png")
  assert np.abs(got - icc.rgb_to_srgb(noise, icc.P3_PRIMARIES)).max() <= 1
  want_grey = icc.grey_to_srgb(grey, 1.8)
  got = stored("grey.png")
  assert got.shape == (70, 70, 3) and np.abs(got - want_grey[..., None]).max() <= 1
  assert np.abs(want_grey - grey).mean() > 10  # the conversion is not a near no-op
  # JPEG in and out, upright (the top half, red, now on the right) and scaled down: the halves'
  # centres within 3 levels of the converted colours, far from the unconverted ones.
  red, green = icc.rgb_to_srgb([[200, 60, 40], [30, 180, 90]], icc.P3_PRIMARIES)
  phone = stored("phone.jpg")
  assert phone.shape == (100, 150, 3)  # 300x200 stored on its side, shorter side 100
  big = stored("big.jpg")
  assert big.shape == (150, 100, 3)
  for where_red, where_green in ((phone[40:60, 100:130], phone[40:60, 20:50]),
                                 (big[20:50, 40:60], big[100:130, 40:60])):
    assert np.abs(where_red.mean((0, 1)) - red).max() <= 3, (where_red.mean((0, 1)), red)
    assert np.abs(where_green.mean((0, 1)) - green).max() <= 3
    assert np.abs(where_red.mean((0, 1)) - (200, 60, 40)).min() > 15  # 17-19 levels apart
  # sRGB under any name, and an unreadable profile: the file as it was.
  for n in ("alias.jpg", "srgb.jpg", "broken.jpg"):
    assert (src / n).read_bytes() == open(os.path.join(out, "images", n), "rb").read(), n
  assert s["colour_converted"] == {"Display P3": 3, "Gray Gamma 1.8": 1}
  assert (s["kept"], s["converted"], s["rotated"], s["resized"]) == (3, 2, 0, 2)
  assert ("  colour: 4 image(s) converted to sRGB from the colour profile they carry (Display "
          "P3: 3, Gray Gamma 1.8: 1)") in build_lib.format_summary(s).splitlines()
  with open(os.path.join(out, datasets.SPEC_FILE)) as f:
    assert json.load(f)["colour_converted"] == {"Display P3": 3, "Gray Gamma 1.8": 1}

def test_a_jpeg_over_pillows_pixel_limit_is_scaled_down_from_a_small_decode(tmp_path,
                                                                            monkeypatch):
  """Pillow refuses images over twice Image.MAX_IMAGE_PIXELS (179 MP). A JPEG to be scaled down
  is decoded at a DCT scale, so the limit applies to that decode: with the limit lowered here to
  2 x 40,000 pixels, a 600x400 JPEG (240,000) stored at a shorter side of 64 decodes at 1/2
  (300x200 = 60,000) and is stored as it would be without a limit; kept at full size, or as a
  PNG (no DCT scale), it is a problem that says why."""
  rng = np.random.default_rng(5)
  a = np.asarray(Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).resize(
      (600, 400), Image.BILINEAR))
  Image.fromarray(a).save(tmp_path / "big.jpg", quality=90)
  Image.fromarray(a).save(tmp_path / "big.png")
  free = build_lib.convert_image(str(tmp_path / "big.jpg"), "big.jpg", str(tmp_path / "free"),
                                 max_short_side=64)
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40_000)
  with pytest.raises(Image.DecompressionBombError):
    Image.open(tmp_path / "big.jpg")  # what the build met before
  got = build_lib.convert_image(str(tmp_path / "big.jpg"), "big.jpg", str(tmp_path / "limited"),
                                max_short_side=64)
  assert got["problem"] is None and got["action"] == "resized"
  assert (got["width"], got["height"], got["stored_width"], got["stored_height"]) == (
      600, 400, 96, 64)
  assert ((tmp_path / "limited" / "big.jpg").read_bytes() ==
          (tmp_path / "free" / "big.jpg").read_bytes())
  assert Image.MAX_IMAGE_PIXELS == 40_000  # the limit is left as it was
  for name, short in (("big.jpg", 0), ("big.png", 64)):
    got = build_lib.convert_image(str(tmp_path / name), name, str(tmp_path / "x"),
                                  max_short_side=short)
    assert got["key"] is None and got["problem"] == (
        "image is too large to decode safely: it decodes at 600x400 = 240,000 pixels, over "
        "Pillow's limit of 80,000 (a decompression bomb); a JPEG scaled down (--max_short_side) "
        "is decoded at up to 1/8 of its size"), (name, got["problem"])
  small = build_lib.convert_image(str(tmp_path / "big.jpg"), "big.jpg", str(tmp_path / "y"),
                                  max_short_side=300)  # 2 x the target: a full-size decode
  assert small["problem"].startswith("image is too large to decode safely: at the DCT scale of "
                                     "its stored size it still decodes at 600x400"), small

def test_a_transparent_colour_key_is_composited_over_white():
  """A PNG's tRNS colour key is alpha in RGB, grey and palette images alike (an RGB image with
  one used to come back unchanged: its transparent colour stayed black)."""
  from msmt_tf import image_utils  # pylint: disable=g-import-not-at-top
  rgb = np.zeros((4, 4, 3), np.uint8)
  rgb[0, 0] = (200, 10, 10)
  index = np.ones((4, 4), np.uint8)  # palette: 0 = (200, 10, 10), 1 = black
  index[0, 0] = 0
  palette = Image.fromarray(index, "P")
  palette.putpalette([200, 10, 10, 0, 0, 0])
  images = {"RGB": (Image.fromarray(rgb), (0, 0, 0)), "L": (Image.fromarray(rgb[..., 0]), 0),
            "P": (palette, 1)}
  for mode, (im, key) in images.items():
    buf = io.BytesIO()
    im.save(buf, "PNG", transparency=key)
    buf.seek(0)
    with Image.open(buf) as png:
      assert png.mode == mode and "transparency" in png.info, mode
      out = np.asarray(image_utils.to_rgb(png))
    assert out.shape == (4, 4, 3) and (out[1:, :] == 255).all(), mode  # the key colour: white
    assert out[0, 0].tolist() == ([200, 10, 10] if mode != "L" else [200] * 3), mode
  # Keys stored at another depth than Pillow decodes to: 2-bit and 16-bit grey (compared with
  # the decoded value, they used to key nothing), 16-bit RGB (matched on its high bytes: the
  # 0x00FF key used to whiten (0xFF00, 0, 0) and keep the keyed pixel).
  def png(width, depth, colour_type, rows, trns):
    def chunk(kind, data):
      return (struct.pack(">I", len(data)) + kind + data
              + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff))
    header = struct.pack(">IIBBBBB", width, len(rows), depth, colour_type, 0, 0, 0)
    raw = zlib.compress(b"".join(b"\0" + r for r in rows))
    return io.BytesIO(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"tRNS", trns)
                      + chunk(b"IDAT", raw) + chunk(b"IEND", b""))

  cases = [  # (file, expected first row)
      (png(4, 1, 0, [bytes([0b01100000])] * 2, struct.pack(">H", 0)), [255, 255, 255, 255]),
      (png(4, 2, 0, [bytes([0b00011011])] * 2, struct.pack(">H", 1)),  # greys 0, 1, 2, 3
       [0, 255, 170, 255]),
      (png(3, 16, 0, [np.array([0x7FFF, 0x8000, 0xFFFF], ">u2").tobytes()] * 2,
           struct.pack(">H", 0x7FFF)), [255, 128, 255]),
      (png(3, 16, 2, [np.array([0xFF00, 0, 0, 0x00FF, 0, 0, 0x1234, 0x1234, 0x1234],
                               ">u2").tobytes()] * 2, struct.pack(">HHH", 0x00FF, 0, 0)),
       [[255, 0, 0], 255, [18, 18, 18]]),
  ]
  for buf, want in cases:
    with Image.open(buf) as im:
      bits = image_utils.sample_bits(im)
      out = np.asarray(image_utils.to_rgb(im)).astype(int)
    want = [w if isinstance(w, list) else [w] * 3 for w in want]
    assert out.shape[-1] == 3 and out[0].tolist() == want and out[1].tolist() == want, bits
    with Image.open(buf) as im:  # loaded first (data.build's order): bits passed in
      im.load()
      assert np.array_equal(np.asarray(image_utils.to_rgb(im, bits)), out), bits


def test_inspect_and_pipeline_read_it_like_any_dataset(built, tmp_path):
  lines = []
  assert inspect_lib.inspect_split(built["out"], "folder", "train", out=lines.append) == []
  text = "\n".join(lines)
  assert "[train] 14 images" in text and "per image, mean" in text and "3 classes" in text
  spec = datasets.read_spec_json(built["out"])
  assert f"batch tokens: int32 [4, {spec['words_num_train']}]" in text
  assert "batch image_256: float32 [4, 256, 256, 3]" in text
  # The command finds out by itself that this is a folder dataset (its dataset_spec.json).
  res = subprocess.run([sys.executable, "-m", "msmt_tf.data.inspect", f"--data_dir={built['out']}",
                        "--split=test", "--skip_images"], cwd=REPO, capture_output=True, text=True)
  assert res.returncode == 0, res.stderr[-2000:]
  assert f"OK: {built['out']} is a usable folder dataset" in res.stdout
  # The flagfile the build wrote (training flags too: --vocab_size, --batch_size) reads as its
  # dataset; a flag typed after it still counts.
  res = subprocess.run([sys.executable, "-m", "msmt_tf.data.inspect",
                        "--flagfile", os.path.join(built["out"], "mine.cfg"), "--split=test",
                        "--skip_images", "--batch_size=2"], cwd=REPO, capture_output=True,
                       text=True)
  assert res.returncode == 0, res.stderr[-2000:]
  assert f"OK: {built['out']} is a usable folder dataset" in res.stdout
  assert "batch image_256: float32 [2, 256, 256, 3]" in res.stdout, res.stdout
  # A source folder (images and metadata, not built yet) is told apart from a dataset.
  (tmp_path / "metadata.csv").write_text("file_name,text\na.png,a picture\n")
  res = subprocess.run([sys.executable, "-m", "msmt_tf.data.inspect", f"--data_dir={tmp_path}"],
                       cwd=REPO, capture_output=True, text=True)
  assert res.returncode == 1 and (
      f"error: {tmp_path} holds metadata.csv: it is a source folder of your own images, not a "
      f"dataset yet; build the dataset from it first: python -m msmt_tf.data.build --source "
      f"{tmp_path} --out data/NAME") in res.stderr, res.stderr[-2000:]
  # Every caption of a variable-count image is drawn by the pipeline over a few epochs.
  train = datasets.load_split(built["out"], "folder", "train")
  pipe = datasets.DataPipeline(train, batch_size=14, words_num=30, num_stages=1, seed=0,
                               num_epochs=12)
  seen = {}
  for batch in pipe:
    for idx, toks in zip(batch["index"], batch["tokens"]):
      seen.setdefault(int(idx), set()).add(tuple(t for t in toks if t))
  for idx, caps in enumerate(train.captions):
    assert seen[idx] <= {tuple(c) for c in caps}
  most = int(np.argmax([len(c) for c in train.captions]))
  assert len(seen[most]) >= 2


def test_interrupted_build_resumes_to_the_same_bytes(source, built, tmp_path):
  out = str(tmp_path / "mine")
  calls = []

  def stop(rec):
    calls.append(rec)
    if len(calls) == 5:
      raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    _build(source["root"], out, skip_bad=True, workers=1, on_image=stop)
  assert not os.path.exists(out)
  # Images staged by an older conversion rule are converted again, not reused.
  state = tmp_path / ".mine.build" / "build_state.json"
  saved = state.read_text()
  older = json.loads(saved)
  older["convert"] -= 1
  state.write_text(json.dumps(older))
  calls.clear()
  with pytest.raises(KeyboardInterrupt):
    _build(source["root"], out, skip_bad=True, workers=1, on_image=stop)
  assert json.loads(state.read_text()) == json.loads(saved)
  summary = _build(source["root"], out, skip_bad=True, workers=1)
  assert summary["reused"] == 5 and summary["images_processed"] == source["decoded"] - 5

  def digest(root):
    h = {}
    for d, _, files in os.walk(root):
      for f in files:
        p = os.path.join(d, f)
        if not f.endswith(".cfg"):
          with open(p, "rb") as fh:
            h[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return h

  assert digest(out) == digest(built["out"])  # same source, same bytes (cfg names the path)
  # An existing dataset is never replaced without --overwrite; --overwrite replaces it whole.
  with pytest.raises(build_lib.BuildError, match="already exists"):
    _build(source["root"], out, skip_bad=True, workers=1)
  summary = _build(source["root"], out, skip_bad=True, workers=1, overwrite=True, seed=3)
  assert datasets.read_spec_json(out)["seed"] == 3
  other = tmp_path / "other"
  other.mkdir()
  (other / "keep.txt").write_text("mine")
  with pytest.raises(build_lib.BuildError, match="not a dataset made by"):
    _build(source["root"], str(other), skip_bad=True, workers=1, overwrite=True)
  assert (other / "keep.txt").read_text() == "mine"


def test_two_training_steps_with_the_built_flagfile(built, tmp_path):
  cfg = os.path.join(built["out"], "mine.cfg")
  # The built flagfile first (dataset, vocabulary), then the smoke sizes for a CPU test.
  common = [f"--flagfile={cfg}", "--flagfile=configs/smoke.cfg", "--dataset=folder",
            f"--damsm_dir={tmp_path / 'damsm'}"]
  # Forgetting --dataset=folder after smoke.cfg (which sets --dataset=shapes) names the flag.
  res = cli.run_main("msmt_tf.pretrain_damsm",  # in this process (tests/cli.py)
                     *[a for a in common if a != "--dataset=folder"])
  assert res.returncode == 1 and "Traceback" not in res.stderr
  assert (f"{built['out']} is a folder dataset (it has dataset_spec.json), but --dataset=shapes: "
          "pass --dataset=folder") in res.stderr
  res = subprocess.run([sys.executable, "-m", "msmt_tf.pretrain_damsm", *common], cwd=REPO,
                       capture_output=True, text=True)
  assert res.returncode == 0, res.stderr[-3000:]
  run_dir = tmp_path / "gan"
  res = subprocess.run([sys.executable, "-m", "msmt_tf.train", *common, f"--run_dir={run_dir}",
                        "--max_steps=2"], cwd=REPO, capture_output=True, text=True)
  assert res.returncode == 0, res.stderr[-3000:]
  with open(run_dir / "losses.jsonl") as f:
    steps = [json.loads(line) for line in f]
  assert [s["step"] for s in steps] == [1, 2]
  assert all(np.isfinite(v) for s in steps for v in s.values() if isinstance(v, float))
  with open(run_dir / "config.json") as f:
    record = json.load(f)
  assert record["data"]["dataset"] == "folder" and record["data"]["data_dir"] == built["out"]


def test_file_name_spellings_people_write(tmp_path):
  """Letter case and Unicode form that differ from the file, an absolute path inside the folder,
  a JSON array instead of JSON lines; a wrong folder gets a hint naming the file that exists."""
  import unicodedata  # pylint: disable=g-import-not-at-top
  src = tmp_path / "src"
  _save(str(src / "images" / "Photo_1.JPG"), _img((200, 10, 10)), "JPEG")
  _save(str(src / "images" / unicodedata.normalize("NFD", "r\u00e9sum\u00e9.png")),
        _img((10, 200, 10)), "PNG")
  _save(str(src / "images" / "abs.jpg"), _img((10, 10, 200)), "JPEG")
  _save(str(src / "images" / "jpeg_named.png"), _img((90, 10, 200)), "JPEG")
  _save(str(src / "elsewhere.jpg"), _img((90, 90, 200)), "JPEG")
  rows = [{"file_name": "images/photo_1.jpg", "text": "case differs"},
          {"file_name": unicodedata.normalize("NFC", "images/r\u00e9sum\u00e9.png"),
           "text": "composed accents"},
          {"file_name": str(src / "images" / "abs.jpg"), "text": "an absolute path"},
          {"file_name": "images/jpeg_named.png", "text": "a jpeg named png"},
          {"file_name": "images/elsewhere.jpg", "text": "wrong folder"},
          {"file_name": "/etc/hostname", "text": "outside"}]
  (src / "metadata.jsonl").write_text(json.dumps(rows, indent=1), encoding="utf8")
  with pytest.raises(build_lib.BuildError) as e:
    _build(str(src), str(tmp_path / "q"), class_column=None, workers=1)
  assert e.value.problems == [
      "metadata.jsonl:5: images/elsewhere.jpg: file listed but missing (a file 'elsewhere.jpg' "
      "exists: file_name is relative to the folder of metadata.jsonl)",
      "metadata.jsonl:6: /etc/hostname: file_name points outside the source folder",
      "elsewhere.jpg: image without captions (no metadata row lists it)"]
  rows[4]["file_name"] = "elsewhere.jpg"
  (src / "metadata.jsonl").write_text(json.dumps(rows[:5], indent=1), encoding="utf8")
  summary = _build(str(src), str(tmp_path / "q"), class_column=None, workers=1,
                   test_fraction=0.5)
  nfc = unicodedata.normalize("NFC", "images/r\u00e9sum\u00e9.png")
  assert summary["notes"] == ["metadata.jsonl:1: 'images/photo_1.jpg' found as "
                              "'images/Photo_1.JPG' (letter case differs)",
                              f"metadata.jsonl:2: {nfc!r} found as "
                              f"{unicodedata.normalize('NFD', nfc)!r}"]
  data = [datasets.load_split(str(tmp_path / "q"), "folder", s) for s in ("train", "test")]
  keys = sorted(k for d in data for k in d.keys)
  assert keys == sorted(["images/Photo_1.JPG", "images/abs.jpg", "images/jpeg_named.png.jpg",
                         unicodedata.normalize("NFD", "images/r\u00e9sum\u00e9.png"),
                         "elsewhere.jpg"])
  assert not os.path.exists(os.path.join(str(tmp_path), "q.problems.txt"))
  classes = np.concatenate([d.class_ids for d in data])
  assert sorted(len(d.keys) for d in data) == [2, 3] and len(classes) == 5


@pytest.mark.parametrize("workers", [1, 2])
def test_two_files_of_one_stored_name_never_swap_pixels(tmp_path, workers):
  """photo.webp is stored as photo.webp.png, the name photo.webp.png has itself: a clash, reported
  (the first listed keeps the name). Converted into one path, the second file's pixels overwrote
  the first's: --skip_bad after the failed build (or in any run, by the order the converters
  finished) gave the kept row's caption the skipped file's image."""
  src = tmp_path / "src"
  red, blue = (220, 20, 20), (20, 20, 220)
  _save(str(src / "photo.webp"), Image.new("RGB", (80, 80), red), "WEBP", lossless=True)
  _save(str(src / "photo.webp.png"), Image.new("RGB", (80, 80), blue), "PNG")
  for i in range(3):
    _save(str(src / f"other{i}.png"), _img((90, 90 + 40 * i, 30)), "PNG")

  def rows(first_red):
    pair = [{"file_name": "photo.webp", "text": "a red photo"},
            {"file_name": "photo.webp.png", "text": "a blue photo"}]
    pair = pair if first_red else pair[::-1]
    return pair + [{"file_name": f"other{i}.png", "text": f"a green square {i}"} for i in range(3)]

  def check(out, first_red):
    colour, caption = (red, "a red photo") if first_red else (blue, "a blue photo")
    with Image.open(os.path.join(out, "images", "photo.webp.png")) as im:
      assert im.convert("RGB").getpixel((40, 40)) == colour
    text = open(os.path.join(out, "text", "photo.webp.png.txt"), encoding="utf8").read()
    assert text == caption + "\n"
    assert not os.path.exists(os.path.join(out, "contested"))  # the aside folder is gone

  for first_red in (True, False):
    (src / "metadata.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows(first_red)), encoding="utf8")
    fresh = str(tmp_path / f"fresh{int(first_red)}")
    _build(str(src), fresh, class_column=None, test_fraction=0.4, workers=workers, skip_bad=True)
    check(fresh, first_red)
    out = str(tmp_path / f"d{int(first_red)}")
    with pytest.raises(build_lib.BuildError) as e:
      _build(str(src), out, class_column=None, test_fraction=0.4, workers=workers)
    second = "photo.webp.png" if first_red else "photo.webp"
    assert [p for p in e.value.problems if "duplicate file name" in p] == [
        f"metadata.jsonl:2: {second}: duplicate file name: stored as 'photo.webp.png', which "
        f"clashes with {'photo.webp' if first_red else 'photo.webp.png'!r} (listed at "
        "metadata.jsonl:1); rename one of them"], e.value.problems
    summary = _build(str(src), out, class_column=None, test_fraction=0.4, workers=workers,
                     skip_bad=True)  # resumes the failed build's conversions
    assert summary["skipped"] == 1
    check(out, first_red)
  # The clash resolved by renaming: both stored, each with its own caption and pixels.
  os.rename(src / "photo.webp.png", src / "photo_blue.png")
  (src / "metadata.jsonl").write_text("".join(
      json.dumps(dict(r, file_name="photo_blue.png") if r["file_name"] == "photo.webp.png"
                 else r) + "\n" for r in rows(True)), encoding="utf8")
  out = str(tmp_path / "d1")
  _build(str(src), out, class_column=None, test_fraction=0.4, workers=workers, overwrite=True)
  check(out, True)
  with Image.open(os.path.join(out, "images", "photo_blue.png")) as im:
    assert im.convert("RGB").getpixel((40, 40)) == blue


def test_min_word_count_leaves_rare_words_out(source, built, tmp_path):
  out = str(tmp_path / "common")
  summary = _build(source["root"], out, skip_bad=True, workers=1, min_word_count=2)
  data = [datasets.load_split(out, "folder", s) for s in ("train", "test")]
  vocab = data[0].vocab
  with open(os.path.join(out, "skipped.txt"), encoding="utf8") as f:
    skipped = f.read()
  # No word of 'grey tones only' occurs twice: reported, gray.jpg keeps its other caption; the
  # cafe image loses its only caption, so it goes too.
  assert "part_a/metadata.jsonl:4: imgs/gray.jpg: caption 'grey tones only' has no word seen " \
      "at least --min_word_count=2 times" in skipped
  assert "part_a/metadata.jsonl:11: imgs/caf\u00e9.png: image without a usable caption" in skipped
  counts = {}
  for d in data:
    for caps in d.captions:
      for c in caps:
        for t in c:
          counts[t] = counts.get(t, 0) + 1
  assert len(vocab) == summary["vocab_size"] == 1 + len(counts)
  assert min(counts.values()) >= 2 and "purple" not in vocab and "colour" in vocab
  keys = [k for d in data for k in d.keys]
  assert "part_a/imgs/caf\u00e9.png" not in keys and "part_a/imgs/gray.jpg" in keys
  assert len(keys) < source["good"]
  gray = [d.captions[d.keys.index("part_a/imgs/gray.jpg")] for d in data
          if "part_a/imgs/gray.jpg" in d.keys][0]
  assert [vocab.decode(c) for c in gray] == ["a gray picture"]


def test_a_caption_that_is_not_text_is_reported_once(tmp_path):
  """JSON values that are not text (a number, a list holding null, null, a missing field) are
  reported as such, once, not also as an "empty caption"; a misspelt --class_column or
  --text_column lists the file's columns."""
  src = tmp_path / "src"
  for i in range(6):
    _save(str(src / f"i{i}.jpg"), _img((40 * i, 10, 10)), "JPEG")
  rows = [{"file_name": "i0.jpg", "text": 5},
          {"file_name": "i1.jpg", "text": ["a fine caption", None]},
          {"file_name": "i2.jpg", "text": None},
          {"file_name": "i3.jpg", "text": "a good caption"},
          {"file_name": "i4.jpg", "caption": "the wrong field"},
          {"file_name": "i5.jpg", "text": []}]
  for r in rows:
    r["kind"] = "bird"
  (src / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf8")
  with pytest.raises(build_lib.BuildError) as e:
    _build(str(src), str(tmp_path / "q"), class_column=None, workers=1)
  assert e.value.problems == [  # a row's own problem, not also "image without a usable caption"
      "metadata.jsonl:1: i0.jpg: the caption is not text (int 5)",
      "metadata.jsonl:2: i1.jpg: the caption list holds a non-text item (None)",
      "metadata.jsonl:3: i2.jpg: the caption is null ('text': null)",
      "metadata.jsonl:5: i4.jpg: no 'text' field in this row",
      "metadata.jsonl:6: i5.jpg: empty caption"]
  for kw, message in (
      (dict(class_column="species"), "metadata.jsonl: no column 'species'; pass --class_column "
       "(columns: caption, kind, text)"),
      (dict(text_column="txt"), "metadata.jsonl: no column 'txt'; pass --text_column (columns: "
       "caption, kind, text)")):
    with pytest.raises(build_lib.BuildError, match=re.escape(message)):
      _build(str(src), str(tmp_path / "q"), workers=1, **{"class_column": None, **kw})
  assert not (tmp_path / "q").exists()
  # A row bad only for its class: its good caption is not blamed too (a second line, once).
  rows = [{"file_name": f"i{i}.jpg", "text": "a good caption", "kind": "bird"} for i in range(6)]
  rows[1]["kind"], rows[2]["kind"] = " ", [1]
  (src / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf8")
  with pytest.raises(build_lib.BuildError) as e:
    _build(str(src), str(tmp_path / "q"), class_column="kind", workers=1)
  assert e.value.problems == ["metadata.jsonl:2: i1.jpg: no class in column 'kind'",
                              "metadata.jsonl:3: i2.jpg: class [1] is not a single value"]


def test_cut_unicode_and_names_at_the_length_limit_are_rows_to_skip(tmp_path):
  """A caption, class or file_name holding half of a UTF-16 pair (JSON's "\\ud83d": a caption cut
  inside an emoji) is a problem of its row, not a crash when the captions are written; an image
  whose stored name leaves no room for its captions file's .txt (255 bytes) is a problem of its
  file; one at the limit is built (its temporary file is named shortly)."""
  src = tmp_path / "src"
  longest = "b" * 247 + ".png"  # 251 bytes: text/<name>.txt is 255
  too_long = "a" * 250 + ".png"  # 254 bytes: its .txt would be 258
  names = [f"i{i}.png" for i in range(8)] + [longest, too_long]
  for i, name in enumerate(names):
    _save(str(src / name), _img((25 * i, 60, 90)), "PNG")
  rows = [{"file_name": n, "text": f"picture number {i}", "kind": "k"} for i, n in enumerate(names)]
  rows[1]["text"] = "a red bird \ud83d"
  rows[2]["text"] = ["a good caption", "cut inside \ud83d"]
  rows[3]["kind"] = "bird \udc00"  # a low half alone, outside surrogateescape's bytes
  rows.append({"file_name": "x\ud83d.png", "text": "an image named with half a pair"})
  # ensure_ascii writes the halves as JSON escapes, as a scraper's output has them.
  (src / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n",
                                      encoding="utf8")
  with pytest.raises(build_lib.BuildError) as e:
    _build(str(src), str(tmp_path / "q"), class_column="kind", workers=1)
  problems = e.value.problems
  text = "\n".join(problems)
  half = "is not valid Unicode (a lone UTF-16 surrogate U+D83D: half of a character pair"
  assert f"metadata.jsonl:2: i1.png: caption {half}" in text, text
  assert f"metadata.jsonl:3: i2.png: caption 2 of 2 {half}" in text, text
  assert ("metadata.jsonl:4: i3.png: class is not valid Unicode (a lone UTF-16 surrogate "
          "U+DC00") in text, text
  assert f"metadata.jsonl:11: x\\ud83d.png: file_name {half}" in text, text
  assert "metadata.jsonl:2: i1.png: image without a usable caption" in text, text
  assert any(p.startswith(f"metadata.jsonl:10: {too_long}: file name too long: the stored image "
                          "is named 254 bytes and its captions file adds .txt, past the 255 "
                          "bytes") for p in problems), text
  assert len(problems) == 6, text
  assert not (tmp_path / "q").exists()
  out = str(tmp_path / "built")
  summary = _build(str(src), out, class_column="kind", workers=1, skip_bad=True)
  keys = _keys(out)
  assert sorted(keys["train"] + keys["test"]) == sorted(
      n for i, n in enumerate(names) if i not in (1, 3, 9))  # i2 keeps its good caption
  assert os.path.isfile(os.path.join(out, "text", longest + ".txt"))
  assert not [f for f in os.listdir(os.path.join(out, "images")) if f.endswith(".tmp")]
  with open(summary["skipped_file"], encoding="utf8") as f:
    assert len(f.read().strip().splitlines()) == 6


def _tiny_source(root, layout, classes=None, header=("file_name", "text", "label")):
  """Images named in `layout` (paths under `root`), each with one caption; one metadata.csv per
  folder. `classes`: one label for all, or None for two alternating labels."""
  by_folder = {}
  for i, rel in enumerate(layout):
    _save(os.path.join(root, *rel.split("/")), _img((20 * i % 250, 90, 160)), "PNG")
    folder, _, base = rel.rpartition("/")
    label = classes or f"c{i % 2}"
    by_folder.setdefault(folder, []).append(f"{base},picture number {i},{label}")
  for folder, lines in by_folder.items():
    with open(os.path.join(root, *folder.split("/"), "metadata.csv"), "w") as f:
      f.write("\n".join([",".join(header)] + lines) + "\n")


def _keys(out):
  return {s: sorted(datasets.load_split(out, "folder", s).keys) for s in ("train", "test")}


def test_split_folders_give_the_split(tmp_path):
  """Hugging Face ImageFolder's split folders: train/ -> train, test/ -> test (validation/ when
  there is no test folder); --test_fraction is then ignored, and the spec records how."""
  src = str(tmp_path / "src")
  _tiny_source(src, ["train/a.png", "train/b.png", "train/c.png", "test/d.png", "test/e.png",
                     "validation/f.png"])
  out = str(tmp_path / "mine")
  summary = _build(src, out, class_column="label", workers=1, test_fraction=0.5)
  assert _keys(out) == {"train": ["train/a.png", "train/b.png", "train/c.png"],
                        "test": ["test/d.png", "test/e.png"]}
  spec = datasets.read_spec_json(out)
  assert spec["split"] == {"method": "folders", "train_folders": ["train"],
                           "test_folders": ["test"], "left_out_folders": ["validation"],
                           "left_out_images": 1}
  assert spec["test_fraction"] is None
  assert spec["warnings"] == ["--test_fraction 0.5 is ignored: the source's split folders set "
                              "the split"]
  text = build_lib.format_summary(summary)
  assert ("split: the source's split folders: train/ -> train, test/ -> test; the 1 image(s) "
          "listed in validation/ are left out") in text
  assert "warning: --test_fraction 0.5 is ignored" in text
  # No test folder: validation/ (HF's names: val, dev, valid, any case, val2017...) is the test
  # split; without --test_fraction nothing is said about it.
  shutil.rmtree(os.path.join(src, "test"))
  os.rename(os.path.join(src, "validation"), os.path.join(src, "Val2017"))
  _save(os.path.join(src, "Val2017", "g.png"), _img((1, 200, 1)), "PNG")
  with open(os.path.join(src, "Val2017", "metadata.csv"), "a") as f:
    f.write("g.png,a green picture,c0\n")
  summary = _build(src, out, class_column="label", workers=1, test_fraction=None,
                   overwrite=True)
  assert _keys(out)["test"] == ["Val2017/f.png", "Val2017/g.png"]
  assert summary["warnings"] == [] and summary["split"]["test_folders"] == ["Val2017"]
  # An image outside the split folders is a problem (HF leaves it out of every split).
  _tiny_source(os.path.join(src, "extra"), ["x.png"])
  with pytest.raises(build_lib.BuildError) as e:
    _build(src, str(tmp_path / "q"), class_column="label", workers=1)
  assert e.value.problems == [
      "extra/metadata.csv:2: x.png: image outside the split folders (train/, Val2017/): move it "
      "into one of them (Hugging Face's ImageFolder leaves such images out of every split)"]
  # A folder named like a split without a training folder beside it (a user's own folder,
  # dev_boards/ or test_tubes/) is no split folder: the hash split, and a warning naming it.
  shutil.rmtree(os.path.join(src, "extra"))
  os.rename(os.path.join(src, "train"), os.path.join(src, "mine"))
  summary = _build(src, str(tmp_path / "q"), class_column=None, workers=1, test_fraction=0.4)
  assert summary["split"]["method"] == "hash"
  assert summary["warnings"] == [
      "Val2017/: named like a Hugging Face split folder, but the source has no training folder "
      "(train/, training/), so the images were split by --test_fraction; to use split folders, "
      "put the training images in SRC/train/"]
  # Only a train/ folder: the hash split, as before.
  os.rename(os.path.join(src, "mine"), os.path.join(src, "train"))
  os.rename(os.path.join(src, "Val2017"), os.path.join(src, "more"))
  summary = _build(src, str(tmp_path / "h"), class_column=None, workers=1, test_fraction=0.4)
  assert summary["split"] == {"method": "hash", "test_fraction": 0.4, "seed": 0}
  assert (summary["train_images"], summary["test_images"]) == (3, 2)
  assert summary["warnings"] == []
  # Split folders one level down (data/train/, data/test/) are named in a warning.
  os.makedirs(os.path.join(src, "data"))
  os.rename(os.path.join(src, "train"), os.path.join(src, "data", "train"))
  os.rename(os.path.join(src, "more"), os.path.join(src, "data", "test"))
  summary = _build(src, str(tmp_path / "n"), class_column=None, workers=1, test_fraction=0.4)
  assert summary["split"]["method"] == "hash"
  assert summary["warnings"] == [
      "data/test/: named like a split folder, but only the source's top-level folders set the "
      "split, so these images were split by --test_fraction like the others; to use the split "
      f"folders, pass --source {os.path.join(src, 'data')}"]


def test_too_small_splits_are_refused_or_warned(tmp_path):
  """Training needs 2 train images (the written batch sizes are never 1); a 1-image test split
  and a single class are warned about, naming the count, column and class."""
  src = str(tmp_path / "src")
  _tiny_source(src, ["a.png", "b.png"])
  with pytest.raises(build_lib.BuildError) as e:
    _build(src, str(tmp_path / "q"), class_column=None, workers=1)
  assert e.value.problems == [
      "2 usable image(s) make 1 train + 1 test with --test_fraction 0.2: training needs at least "
      "2 train images (each batch pairs an image with another image's caption); add images (a "
      "dataset needs at least 3: 2 train, 1 test)"]
  _tiny_source(src, ["a.png", "b.png", "c.png"], classes="bird")
  with pytest.raises(build_lib.BuildError, match=r"3 usable image\(s\) make 1 train \+ 2 test "
                     r"with --test_fraction 0.5: .* add images or lower --test_fraction"):
    _build(src, str(tmp_path / "q"), class_column=None, workers=1, test_fraction=0.5)
  assert not (tmp_path / "q").exists()
  out = str(tmp_path / "mine")
  summary = _build(src, out, class_column="label", workers=1, test_fraction=None)
  assert (summary["train_images"], summary["test_images"]) == (2, 1)
  with open(os.path.join(out, "mine.cfg")) as f:
    cfg = f.read().splitlines()
  assert "--batch_size=2" in cfg and "--damsm_batch_size=2" in cfg
  warnings = datasets.read_spec_json(out)["warnings"]
  assert warnings == summary["warnings"] and len(warnings) == 2, warnings
  assert warnings[0].startswith("the test split has 1 image: FID and R-precision on it need at "
                                "least 2") and "--test_fraction (now 0.1, 3 usable images)" in \
      warnings[0]
  assert warnings[1].startswith("--class_column 'label': every train image has class 'bird': "
                                "DAMSM's losses")
  assert "\nwarning: --class_column 'label': every train image" in \
      build_lib.format_summary(summary)
  # With split folders: a 1-image train folder is refused, a 1-image test folder warned about.
  src = str(tmp_path / "split")
  _tiny_source(src, ["train/a.png", "test/b.png", "test/c.png"])
  with pytest.raises(build_lib.BuildError, match=re.escape(
      "train/ holds 1 usable image(s), test/ 2: training needs at least 2 train images")):
    _build(src, str(tmp_path / "q"), class_column=None, workers=1, test_fraction=None)
  os.rename(os.path.join(src, "test", "c.png"), os.path.join(src, "train", "c.png"))
  with open(os.path.join(src, "train", "metadata.csv"), "a") as f:
    f.write("c.png,picture number 2,c1\n")
  with open(os.path.join(src, "test", "metadata.csv"), "w") as f:
    f.write("file_name,text,label\nb.png,picture number 1,c1\n")
  summary = _build(src, str(tmp_path / "s"), class_column=None, workers=1, test_fraction=None)
  assert summary["warnings"] == [
      "the test split has 1 image: FID and R-precision on it need at least 2 (FID a covariance, "
      "R-precision other images' captions as mismatches); put more images in test/"]
  # Two test images of one class: R-precision has no mismatched captions.
  _save(os.path.join(src, "test", "d.png"), _img((5, 5, 250)), "PNG")
  with open(os.path.join(src, "test", "metadata.csv"), "a") as f:
    f.write("d.png,a blue picture,c1\n")
  summary = _build(src, str(tmp_path / "t"), class_column="label", workers=1, test_fraction=None)
  assert summary["warnings"] == [
      "--class_column 'label': every test image has class 'c1': R-precision on the test split "
      "draws its mismatched captions from other classes and cannot run; give the test images at "
      "least 2 classes"]
  # metric_main refuses R-precision there, naming the class as the column gave it and what helps
  # a dataset of split folders (not a --test_fraction, which their split does not use).
  from evaluation import metric_main  # pylint: disable=g-import-not-at-top
  test = datasets.load_split(str(tmp_path / "t"), "folder", "test")
  c1 = datasets.read_spec_json(str(tmp_path / "t"))["class_names"].index("c1") + 1
  assert test.split_source() == "folders" and test.class_name(test.classes[0]) == f"{c1} ('c1')"
  with pytest.raises(ValueError) as e:
    metric_main.check_splits([("rprec_test", "rprec", None, "test")], {"test": test}, {})
  assert f"have class {c1} ('c1'): no mismatched captions (evaluate on the train split " \
         "(rprec_train); or put more images in the source's test folder and rebuild the " \
         "dataset (python -m msmt_tf.data.build --source <your images> --out " in str(e.value)
  assert "--test_fraction" not in str(e.value)
  hashed = datasets.load_split(out, "folder", "test")  # split by --test_fraction: that hint
  assert hashed.split_source() == "hash"
  assert "--test_fraction 0.2 --overwrite" in metric_main._split_hint("rprec_test", "test", hashed)


def test_messages_name_what_they_mean(tmp_path):
  """A broken link is not a letter-case match; an empty CSV header cell is named."""
  src = tmp_path / "src"
  _tiny_source(str(src), ["a.png", "b.png", "c.png"])
  os.symlink(str(src / "nowhere.jpg"), str(src / "broken.jpg"))
  with open(src / "metadata.csv", "a") as f:
    f.write("broken.jpg,a link to nothing,c0\n")
  with pytest.raises(build_lib.BuildError) as e:
    _build(str(src), str(tmp_path / "q"), class_column=None, workers=1, skip_bad=False)
  assert len(e.value.problems) == 1 and e.value.problems[0].startswith(
      "metadata.csv:5: broken.jpg: cannot read the file"), e.value.problems
  summary = _build(str(src), str(tmp_path / "q"), class_column=None, workers=1, skip_bad=True)
  assert summary["notes"] == []
  (src / "metadata.csv").write_text(",file_name,caption,label\n0,a.png,a picture,c0\n")
  with pytest.raises(build_lib.BuildError, match=re.escape(
      "metadata.csv: no column 'text'; pass --text_column (columns: (unnamed column), caption, "
      "label)")):
    _build(str(src), str(tmp_path / "r"), class_column=None, workers=1)
  two = tmp_path / "two"  # every metadata file without the column is named, not the first
  _tiny_source(str(two), ["a/x.png", "a/y.png", "b/z.png"])
  with pytest.raises(build_lib.BuildError) as e:
    _build(str(two), str(tmp_path / "t"), class_column="species", workers=1)
  assert str(e.value).splitlines()[:2] == [
      f"{name}/metadata.csv: no column 'species'; pass --class_column (columns: label, text)"
      for name in ("a", "b")], str(e.value)
  # A metadata file given as --source: a file, not a missing folder.
  with pytest.raises(build_lib.BuildError, match=re.escape(
      f"--source {src / 'metadata.csv'} is a file, not a folder: give the folder that holds")):
    _build(str(src / "metadata.csv"), str(tmp_path / "r"), class_column=None, workers=1)
  # A CSV cell meant as a list of captions but cut short is named, not kept as one caption; a
  # caption that only starts with a bracket is one.
  _tiny_source(str(tmp_path / "lists"), ["a.png", "b.png", "c.png", "d.png"])
  with open(tmp_path / "lists" / "metadata.csv", "a") as f:
    f.write('a.png,"[""a blue dog"", ""a blue hound""",c0\n'
            'b.png,"[""a red cat""]",c1\n'
            'c.png,[photo] a green bird,c0\n')
  with pytest.raises(build_lib.BuildError) as e:
    _build(str(tmp_path / "lists"), str(tmp_path / "r"), class_column=None, workers=1)
  assert e.value.problems == [
      "metadata.csv:6: a.png: the cell '[\"a blue dog\", \"a blue hound\"' starts like a JSON "
      "list of captions but is not one (a list is [\"caption 1\", \"caption 2\"], with the "
      "closing bracket)"], e.value.problems
  summary = _build(str(tmp_path / "lists"), str(tmp_path / "r"), class_column=None, workers=1,
                   skip_bad=True, test_fraction=0.25)
  texts = {k: open(tmp_path / "r" / "text" / f"{k}.txt").read().splitlines()
           for k in ("a.png", "b.png", "c.png")}
  assert texts == {"a.png": ["picture number 0"], "b.png": ["picture number 1", "a red cat"],
                   "c.png": ["picture number 2", "[photo] a green bird"]}, texts
  assert summary["skipped"] == 1
  for bad in ("0", "-1"):  # not taken as "one per core" / one worker
    res = subprocess.run([sys.executable, "-m", "msmt_tf.data.build", f"--source={src}",
                          f"--out={tmp_path / 's'}", f"--workers={bad}"], cwd=REPO,
                         capture_output=True, text=True)
    assert res.returncode == 1 and f"flag --workers={bad}: {bad} is not a positive" in res.stderr
    assert not (tmp_path / "s").exists()


def _photo(size, seed):
  """A smooth colour picture (a JPEG-friendly photo stand-in) with a black top-left quarter, so
  a scale-down's orientation and framing are visible."""
  rng = np.random.default_rng(seed)
  im = Image.fromarray(rng.integers(0, 255, (6, 8, 3), np.uint8)).resize(size, Image.BICUBIC)
  im.paste((0, 0, 0), (0, 0, size[0] // 2, size[1] // 2))
  return im


def test_large_images_are_stored_at_the_size_training_decodes(tmp_path, caplog):
  """The build stores a shorter side over --max_short_side (default 355: DAMSM's resize before
  its 299 crop, the GAN's is 304) scaled down to it, upright, in its format family; a smaller
  image is kept byte for byte. --max_short_side 0 keeps every size and names the large images;
  a value under 64 is refused; a resumed build made with another value converts again; and a
  pipeline that resizes past what was stored says so. The default --workers is the cores the
  process may run on."""
  from msmt_tf.data import transforms  # pylint: disable=g-import-not-at-top
  assert build_lib.DEFAULT_MAX_SHORT_SIDE == transforms.load_size_for(299) == 355
  src = tmp_path / "src"
  _save(str(src / "wide.jpg"), _photo((1200, 800), 1), "JPEG", quality=92)
  exif = Image.Exif()
  exif[0x0112] = 6  # stored 1000x720 on its side: upright 720x1000
  _save(str(src / "phone.jpg"), _photo((1000, 720), 2), "JPEG", quality=92, exif=exif.tobytes())
  _save(str(src / "tall.png"), _photo((720, 900), 3), "PNG")
  _save(str(src / "cmyk.jpg"), _photo((760, 740), 4).convert("CMYK"), "JPEG", quality=92)
  _save(str(src / "small.jpg"), _photo((300, 200), 5), "JPEG", quality=92)
  names = ["wide.jpg", "phone.jpg", "tall.png", "cmyk.jpg", "small.jpg"]
  with open(src / "metadata.jsonl", "w") as f:
    for i, n in enumerate(names):
      f.write(json.dumps({"file_name": n, "text": f"a picture number {i} of a bird"}) + "\n")
  out = str(tmp_path / "data" / "photos")
  # Run on one core (as `taskset -c N` or Slurm would): the default --workers follows the
  # affinity, not os.cpu_count() (where the system has affinities: not macOS).
  pinned = hasattr(os, "sched_setaffinity")
  if pinned:
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cores)})
  try:
    s = _build(str(src), out, class_column=None, test_fraction=0.4)
  finally:
    if pinned:
      os.sched_setaffinity(0, cores)
  assert s["workers"] == (1 if pinned else build_lib.usable_cores())
  assert (s["resized"], s["kept"], s["max_short_side"]) == (4, 1, 355)
  with open(os.path.join(out, datasets.SPEC_FILE)) as f:
    assert json.load(f)["max_short_side"] == 355
  assert build_lib.format_summary(s).splitlines()[1] == (
      "  images: 3 train + 2 test (1 kept as they were, 0 converted, 0 rotated by EXIF, 4 scaled "
      "down to a shorter side of 355 px)")
  assert not s["warnings"]
  img = lambda key: os.path.join(out, "images", key)
  with open(img("small.jpg"), "rb") as f:
    assert f.read() == (src / "small.jpg").read_bytes()
  # The longer side truncated, as the pipeline's resize: 1200 * 355 / 800 = 532.5 -> 532.
  expected = {"wide.jpg": ((532, 355), "JPEG"), "phone.jpg": ((355, 493), "JPEG"),
              "tall.png": ((355, 443), "PNG"), "cmyk.jpg": ((364, 355), "JPEG")}
  for key, (size, fmt) in expected.items():
    with Image.open(img(key)) as im, Image.open(src / key) as ref:
      assert (im.size, im.format, im.mode) == (size, fmt, "RGB"), key
      # The picture itself: the source decoded whole, upright, scaled by Pillow's Lanczos. The
      # JPEGs are saved again at q95: measured 0.44-0.47 levels of mean difference on these
      # images (0.0 for the PNG); a wrong crop or turn is tens of levels.
      want = np.asarray(image_utils.to_rgb(ImageOps.exif_transpose(ref)).resize(
          size, Image.LANCZOS), np.float32)
      got = np.asarray(im, np.float32)
      assert np.abs(got - want).mean() < 2.5, (key, np.abs(got - want).mean())
      # Upright: the black quarter is top left, also for the phone photo (rotated by EXIF).
      if key != "phone.jpg":
        assert got[:size[1] // 3, :size[0] // 3].mean() < 20 < got[-size[1] // 3:].mean(), key
      else:  # stored on its side, its black quarter turned to the top right
        assert got[:size[1] // 3, -size[0] // 3:].mean() < 20 < got[:, :size[0] // 3].mean()
  # The pipeline resizes 355 to 304 for 256 px training: nothing to say; a smaller build is named.
  split = datasets.load_split(out, "folder", "train")
  assert datasets.stored_smaller_message(split, 304) is None
  assert datasets.stored_smaller_message(split, 355) is None

  # --max_short_side 0: every image at its size, the ones over 710 px named.
  kept = str(tmp_path / "data" / "kept")
  s = _build(str(src), kept, class_column=None, test_fraction=0.4, max_short_side=0)
  assert (s["resized"], s["kept"]) == (0, 3)  # the CMYK JPEG converted, the EXIF-turned one rotated
  with Image.open(os.path.join(kept, "images", "wide.jpg")) as im:
    assert im.size == (1200, 800)
  assert build_lib.format_summary(s).splitlines()[1] == (
      "  images: 3 train + 2 test (3 kept as they were, 1 converted, 1 rotated by EXIF; "
      "--max_short_side 0: none scaled down)")
  (warning,) = s["warnings"]
  assert warning.startswith("4 of 5 images are stored with a shorter side over 710 px (the "
                            "largest: wide.jpg, 1200x800)"), warning
  assert "--max_short_side=355 (the default)" in warning
  with pytest.raises(build_lib.BuildError, match="--max_short_side must be 0 .* or at least 64 "
                     ".* got 32"):
    _build(str(src), str(tmp_path / "data" / "tiny"), class_column=None, max_short_side=32)

  # A build stopped after its first image, resumed with another --max_short_side: converted again.
  again = str(tmp_path / "data" / "again")
  def stop(rec):
    raise KeyboardInterrupt
  with pytest.raises(KeyboardInterrupt):
    _build(str(src), again, class_column=None, test_fraction=0.4, max_short_side=500,
           workers=1, on_image=stop)
  s = _build(str(src), again, class_column=None, test_fraction=0.4, max_short_side=200,
             workers=1)
  assert (s["reused"], s["resized"], s["kept"]) == (0, 4, 1)  # small.jpg: 200 px, kept
  with Image.open(os.path.join(again, "images", "wide.jpg")) as im:
    assert im.size == (300, 200)
  split = datasets.load_split(again, "folder", "train")
  message = datasets.stored_smaller_message(split, 304)
  assert message == (f"{again} was built with --max_short_side 200: 4 of its images were "
                     "scaled down to 200 px on the shorter side, which this pipeline scales up "
                     "to 304 px before its crop; rebuild it with --max_short_side 304 (or 0) to "
                     "train on the source's detail")
  with caplog.at_level("WARNING"):
    datasets.DataPipeline(split, 2, 8)  # 64, 128, 256 px: the shorter side resized to 304
    datasets.DataPipeline(split, 2, 8)  # said once
  assert [r.getMessage() for r in caplog.records if "--max_short_side" in r.getMessage()] == [
      message]
  # Built with a small value that scaled nothing (every image already smaller): nothing to say.
  with open(os.path.join(kept, datasets.SPEC_FILE)) as f:
    spec = json.load(f)
  assert (spec["max_short_side"], spec["resized"]) == (0, 0)
  with open(os.path.join(kept, datasets.SPEC_FILE), "w") as f:
    json.dump(dict(spec, max_short_side=100), f)
  assert datasets.stored_smaller_message(datasets.load_split(kept, "folder", "train"), 304) is None
