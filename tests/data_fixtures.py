"""Stand-in datasets in the true CUB (birds) and COCO layouts, made from scratch for tests."""

import os
import pickle
import shutil

import numpy as np
from PIL import Image


def py2_pickle_of_strings(strings):
  """A protocol-2 pickle as Python 2 writes a list of `str` (SHORT_BINSTRING opcodes)."""
  out = bytearray(b"\x80\x02](")
  for s in strings:
    data = s.encode("latin1")
    assert len(data) < 256
    out += b"U" + bytes([len(data)]) + data
  out += b"e."
  return bytes(out)


def write_birds(root, train_keys=("001.Black_footed_Albatross/Bird_0001",
                                  "001.Black_footed_Albatross/Bird_0002",
                                  "002.Laysan_Albatross/Bird_0003"),
                test_keys=("003.Sooty_Albatross/Bird_0004",), captions_per_image=10):
  """CUB layout without captions.pickle (the loader rebuilds it from text/).

  Every image is blue with a red square exactly where DM-GAN's bounding-box crop lands, so a
  correct crop yields an all-red picture.
  """
  cub = os.path.join(root, "CUB_200_2011")
  lines_img, lines_box = [], []
  words = ["this", "bird", "has", "a", "red", "crown", "and", "short", "beak", "white", "belly"]
  for split, keys in (("train", train_keys), ("test", test_keys)):
    os.makedirs(os.path.join(root, split), exist_ok=True)
    with open(os.path.join(root, split, "filenames.pickle"), "wb") as f:
      f.write(py2_pickle_of_strings(keys))
    with open(os.path.join(root, split, "class_info.pickle"), "wb") as f:
      pickle.dump([int(k[:3]) for k in keys], f, protocol=2)
    for k in keys:
      img_id = len(lines_img) + 1
      lines_img.append(f"{img_id} {k}.jpg")
      # bbox (100, 50, 80, 80): r = 60, centre (140, 90) -> crop [80, 30, 200, 150].
      lines_box.append(f"{img_id} 100.0 50.0 80.0 80.0")
      img = np.zeros((200, 300, 3), np.uint8)
      img[..., 2] = 255
      img[30:150, 80:200] = (255, 0, 0)
      path = os.path.join(cub, "images", k + ".jpg")
      os.makedirs(os.path.dirname(path), exist_ok=True)
      Image.fromarray(img).save(path, quality=98)
      text_path = os.path.join(root, "text", k + ".txt")
      os.makedirs(os.path.dirname(text_path), exist_ok=True)
      rng = np.random.default_rng(img_id)
      caps = [" ".join(rng.choice(words, size=rng.integers(5, 30))) for _ in range(captions_per_image)]
      with open(text_path, "w") as f:
        f.write("\n".join(caps) + "\n")
  with open(os.path.join(cub, "images.txt"), "w") as f:
    f.write("\n".join(lines_img) + "\n")
  with open(os.path.join(cub, "bounding_boxes.txt"), "w") as f:
    f.write("\n".join(lines_box) + "\n")
  return root


def write_coco(root, train_n=3, test_n=2):
  """COCO layout: no class_info.pickle, 5 captions, images/<key>.jpg, Python-2 pickles."""
  from msmt_tf.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  keys = {"train": [f"COCO_train2014_{i:012d}" for i in range(train_n)],
          "test": [f"COCO_val2014_{i:012d}" for i in range(test_n)]}
  all_tokens = {}
  for split in ("train", "test"):
    os.makedirs(os.path.join(root, split), exist_ok=True)
    with open(os.path.join(root, split, "filenames.pickle"), "wb") as f:
      f.write(py2_pickle_of_strings(keys[split]))
    all_tokens[split] = []
    for i, k in enumerate(keys[split]):
      img = np.full((90 + 10 * i, 120, 3), 40 * i, np.uint8)
      os.makedirs(os.path.join(root, "images"), exist_ok=True)
      Image.fromarray(img).save(os.path.join(root, "images", k + ".jpg"))
      caps = [f"a man riding a horse number {j} on the beach" for j in range(5)]
      os.makedirs(os.path.join(root, "text"), exist_ok=True)
      with open(os.path.join(root, "text", k + ".txt"), "w") as f:
        f.write("\n".join(caps))
      all_tokens[split].extend(vocab_lib.tokenize(c) for c in caps)
  v = vocab_lib.Vocabulary.from_captions(all_tokens["train"] + all_tokens["test"])
  caps = [[[v.index(t) for t in toks] for toks in all_tokens[s]] for s in ("train", "test")]
  with open(os.path.join(root, "captions.pickle"), "wb") as f:
    pickle.dump([caps[0], caps[1], v.ixtoword, v.wordtoix], f, protocol=2)
  return root


def renumbered_copy(data, out):
  """A copy of the dataset `data` whose vocabulary swaps the numbers of two words (and the
  captions' ids with them): the same captions, words and size, other word numbers (what a rebuild
  from edited captions can give)."""
  shutil.copytree(data, out)
  with open(os.path.join(out, "captions.pickle"), "rb") as f:
    train_caps, test_caps, ixtoword, wordtoix = pickle.load(f)
  swap = {1: 2, 2: 1}
  ixtoword = {swap.get(i, i): w for i, w in ixtoword.items()}
  wordtoix = {w: swap.get(i, i) for w, i in wordtoix.items()}
  train_caps, test_caps = ([[swap.get(t, t) for t in cap] for cap in caps]
                           for caps in (train_caps, test_caps))
  with open(os.path.join(out, "captions.pickle"), "wb") as f:
    pickle.dump([train_caps, test_caps, ixtoword, wordtoix], f)
  return str(out)
