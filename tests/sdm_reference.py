"""A slow, literal numpy implementation of SDM (paper Eq. 5-14), loop by loop, for tests."""

import numpy as np


def conv_same(x, kernel, bias=None):
  """'same' 2-D convolution (stride 1) of `[H, W, Cin]` by `[kh, kw, Cin, Cout]`; an even size
  pads (k - 1) // 2 before and the rest after, as TensorFlow and JAX do."""
  kh, kw = kernel.shape[:2]
  xp = np.pad(x, ((((kh - 1) // 2, kh - 1 - (kh - 1) // 2)),
                  ((kw - 1) // 2, kw - 1 - (kw - 1) // 2), (0, 0)))
  h, w = x.shape[:2]
  out = np.zeros((h, w, kernel.shape[-1]))
  for u in range(h):
    for v in range(w):
      for a in range(kh):
        for b in range(kw):
          out[u, v] += xp[u + a, v + b] @ kernel[a, b]
  return out if bias is None else out + bias


def relu(x):
  return np.maximum(x, 0.0)


def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def sdm_reference(layer, words, word_mask, memory_source, query_source):
  """Evaluates `layer` (a built SpatialDynamicMemory) literally, in float64."""
  wt = {v.path.split("/")[-2] + "/" + v.path.split("/")[-1]: np.asarray(v, np.float64)
        for v in layer.weights}
  A = wt["A/kernel"][:, 0]
  Bg = np.asarray(layer.grid_gate, np.float64)
  h, nr, mode = layer.grid, layer.channels, layer.key_mode
  batch, length = words.shape[:2]
  s = memory_source.shape[1]
  p = s // h
  out = np.zeros((batch, s, s, nr))
  for n in range(batch):
    R = memory_source[n].astype(np.float64)
    U = query_source[n].astype(np.float64)
    W = words[n].astype(np.float64)
    # Eq. 5: grid-level image features.
    C = np.zeros((h, h, nr))
    for i in range(h):
      for j in range(h):
        C[i, j] = R[i * p:(i + 1) * p, j * p:(j + 1) * p].reshape(-1, nr).mean(0)
    Mc = relu(conv_same(C, wt["M_c/kernel"], wt["M_c/bias"]))
    # Eq. 6-7: one slot per (word, cell); then phi_K, phi_V per word over the grid.
    K = np.zeros((length, h, h, wt["phi_K/kernel"].shape[-1]))
    V = np.zeros((length, h, h, nr))
    for l in range(length):
      Mw = relu(W[l] @ wt["M_w/kernel"] + wt["M_w/bias"])
      m = np.zeros((h, h, Mw.shape[0]))
      for i in range(h):
        for j in range(h):
          g = sigmoid(A @ W[l] + Bg[i, j] @ C[i, j])
          m[i, j] = Mw * g + Mc[i, j] * (1 - g)
      K[l] = relu(conv_same(m, wt["phi_K/kernel"], wt["phi_K/bias"]))
      V[l] = relu(conv_same(m, wt["phi_V/kernel"], wt["phi_V/bias"]))
    # Eq. 9-12: queries.
    Qg = conv_same(U, wt["phi_Q_global/kernel"], wt["phi_Q_global/bias"])
    Qgrid = conv_same(U, wt["phi_Q_grid/kernel"], wt["phi_Q_grid/bias"])
    Qpix = conv_same(U, wt["phi_Q_pixel/kernel"], wt["phi_Q_pixel/bias"])
    q_global = Qg.reshape(-1, nr).mean(0)
    valid = [l for l in range(length) if word_mask[n, l]]
    for i in range(h):
      for j in range(h):
        q_grid = Qgrid[i * p:(i + 1) * p, j * p:(j + 1) * p].reshape(-1, nr).mean(0)
        for a in range(p):
          for b in range(p):
            q_pixel = Qpix[i * p + a, j * p + b]
            scores = []
            for l in valid:
              key = K[l, i, j]
              if mode == "split":
                score = key[:nr] @ (q_global + q_grid + q_pixel) + key[nr + a * p + b]
              elif mode == "concat":
                score = key @ np.concatenate([q_global, q_grid, q_pixel])
              else:
                q = np.concatenate([q_global, q_grid, q_pixel]) @ wt["query_proj/kernel"]
                score = key[:nr] @ q + key[nr + a * p + b]
              scores.append(score)
            scores = np.asarray(scores)
            alpha = np.exp(scores - scores.max())
            alpha /= alpha.sum()                                   # Eq. 8
            e = sum(al * V[l, i, j] for al, l in zip(alpha, valid))  # Eq. 13
            out[n, i * p + a, j * p + b] = e                      # Eq. 14
  return out
