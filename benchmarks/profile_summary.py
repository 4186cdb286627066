"""Where a profiled step's device time goes: the table behind BUILD.md's H100 profile bullet.

  pip install xprof   # not a project dependency: only this script reads XPlane files
  python benchmarks/profile_summary.py PROFILE_DIR_OR_XPLANE.pb [...] [--ops N]

PROFILE_DIR is what `bench --profile_dir` wrote (benchmarks/gpu_session.sh: profile_*.tgz,
unpacked). Prints, per device stream: the span of the traced step(s), the busy time, and the busy
time by kind of kernel (library convolutions / GEMMs, XLA fusions, copies, other), then the XLA
fusions by kind (transpose, reduce, concatenate, ...). Kernels run from CUDA graphs (XLA's command
buffers) are counted too: the trace viewer has them, XProf's per-op tables do not. `--ops N`: also
the N HLO ops with the most self time (XProf's hlo_stats: outside command buffers only), with the
framework op (the Keras layer path) each comes from.

  python benchmarks/profile_summary.py PROFILE_DIR --layers N

also prints the N (layer, pass, call) groups with the most device time, every kernel counted,
those inside command buffers too: XLA's fusions by their name in the optimized HLO module that
the profile holds, and each library kernel (cuDNN, cuBLAS, which carry no HLO name inside a
CUDA graph) by the custom call scheduled between the fusions around it; profiles of one step
only (`bench --profile_steps 1`, as gpu_session.sh takes them). Needs TensorFlow's
protobufs beside xprof (this project's environment: `pip install xprof`). Where two custom
calls share a gap, the kernels go to the first (the count of such gaps is printed).

  python benchmarks/profile_summary.py --compare PROFILE_A PROFILE_B [--depth D] [--top N]

prints, for two one-step profiles of the same model (a baseline and a change), the device time of
each (layer path cut to its first D parts, default 3, pass) group in both and the difference,
the N (default 40) largest first, then the totals: BUILD.md's per-layer comparisons.

  python benchmarks/profile_summary.py --cudnn_convs XLA_DUMP_DIR

prints instead which cuDNN call XLA made of each convolution (forward, backward-input or
backward-filter), with its result and operand shapes, window and dimension labels, counted over
the optimized HLO modules of an `XLA_FLAGS=--xla_dump_to=DIR` run (what gpu_session.sh's
former group 7 did; a profile's own HLO names the cuDNN call too, `--layers`).
"""

import collections
import glob
import json
import os
import re
import sys

_LIBRARY = re.compile(r"xmma|cudnn|conv|implicit|winograd|fft|cutlass|sm90|sm80|wgrad|dgrad|gemm",
                      re.I)


def kernel_kind(name):
  """'xla fusion', 'copy/memset', 'conv/gemm library' or 'other' for a device kernel's name."""
  if "fusion" in name and not _LIBRARY.search(name.replace("fusion", "")):
    return "xla fusion"
  if re.search("memcpy|memset", name, re.I):
    return "copy/memset"
  if _LIBRARY.search(name):
    return "conv/gemm library"
  return "other"


def device_streams(events):
  """{stream name: its kernels} from Chrome trace events (`traceEvents`): the 'X' events of the
  threads whose 'M' thread_name metadata names a device stream ('Stream #...')."""
  threads = {(e["pid"], e.get("tid")): e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
  streams = collections.defaultdict(list)
  for e in events:
    name = threads.get((e.get("pid"), e.get("tid")), "")
    if e.get("ph") == "X" and name.startswith("Stream #"):
      streams[name].append(e)
  return streams


_LIBRARY_ROLES = (("weight gradient", "wgrad"), ("input gradient", "dgrad"),
                  ("forward", "fprop|conv"), ("gemm", "gemm|gemv"))


def library_role(name):
  """What a library kernel computes, by its name (cuDNN's xmma/cutlass kernels say wgrad, dgrad
  or fprop): 'weight gradient', 'input gradient', 'forward', 'gemm' or 'other'."""
  return next((role for role, pattern in _LIBRARY_ROLES if re.search(pattern, name, re.I)),
              "other")


# Short kernels: how many kernels of at most this many microseconds, and their time. A kernel of
# a few microseconds is mostly its fixed cost (launch, ramp-up, tail), whatever it computes.
SHORT_US = (2, 5, 10)


def summarize(events):
  """{stream name: {span_us, busy_us, kinds: {kind: us}, fusions: {kind: us}, library: {role:
  us}, short: {at most us: (kernels, us)}}} from Chrome trace events (`traceEvents`: 'M'
  thread_name metadata and 'X' complete events)."""
  out = {}
  for name, kernels in device_streams(events).items():
    kinds, fusions, library = collections.Counter(), collections.Counter(), collections.Counter()
    for k in kernels:
      kind = kernel_kind(k["name"])
      kinds[kind] += k.get("dur", 0)
      if kind == "xla fusion":
        fusions[re.sub(r"[._]\d+$", "", k["name"])] += k.get("dur", 0)
      elif kind == "conv/gemm library":
        library[library_role(k["name"])] += k.get("dur", 0)
    start = min(k["ts"] for k in kernels)
    end = max(k["ts"] + k.get("dur", 0) for k in kernels)
    short = {limit: [0, 0] for limit in SHORT_US}  # {at most us: [kernels, us]}
    for k in kernels:
      for limit in SHORT_US:
        if k.get("dur", 0) <= limit:
          short[limit][0] += 1
          short[limit][1] += k.get("dur", 0)
    out[name] = {"kernels": len(kernels), "span_us": end - start, "busy_us": sum(kinds.values()),
                 "kinds": dict(kinds), "fusions": dict(fusions), "library": dict(library),
                 "short": {limit: tuple(v) for limit, v in short.items()}}
  return out


def trace_events(path):
  """The trace viewer's events of an XPlane file (needs the xprof package)."""
  from xprof.convert import raw_to_tool_data  # pylint: disable=g-import-not-at-top
  data, _ = raw_to_tool_data.xspace_to_tool_data(
      [path], "trace_viewer", {"trace_viewer_options": {"resolution": 0}})
  return json.loads(data)["traceEvents"]


def hlo_rows(table):
  """XProf's hlo_stats table (`{"cols": [{"id"}...], "rows": [{"c": [{"v"}...]}]}`) as dicts,
  most self time first."""
  ids = [c["id"] for c in table["cols"]]
  rows = [dict(zip(ids, [c["v"] if c else None for c in r["c"]])) for r in table["rows"]]
  return sorted(rows, key=lambda r: -(r.get("total_self_time") or 0))


def hlo_stats(path):
  from xprof.convert import raw_to_tool_data  # pylint: disable=g-import-not-at-top
  data, _ = raw_to_tool_data.xspace_to_tool_data([path], "hlo_stats", {})
  return json.loads(data)


def report_ops(rows, n):
  return "\n".join(f"  {(r.get('total_self_time') or 0) / 1000:8.2f} ms  {r.get('hlo_op_name')}  "
                   f"{r.get('tf_op_name') or ''}" for r in rows[:n])


def report(summary):
  lines = []
  for name, s in summary.items():
    busy = s["busy_us"]
    lines.append(f"{name}: {s['kernels']} kernels, span {s['span_us'] / 1000:.2f} ms, busy "
                 f"{busy / 1000:.2f} ms")
    for kind, us in sorted(s["kinds"].items(), key=lambda kv: -kv[1]):
      lines.append(f"  {us / 1000:8.2f} ms {100 * us / busy:5.1f}%  {kind}")
    top = sorted(s["fusions"].items(), key=lambda kv: -kv[1])[:8]
    lines.append("  fusions: " + ", ".join(f"{k} {us / 1000:.2f} ms" for k, us in top))
    roles = sorted(s["library"].items(), key=lambda kv: -kv[1])
    lines.append("  library: " + ", ".join(f"{k} {us / 1000:.2f} ms" for k, us in roles))
    lines.append("  short kernels: " + ", ".join(
        f"<= {limit} us {n} ({us / 1000:.2f} ms)" for limit, (n, us) in s["short"].items()))
  return "\n".join(lines)


def hlo_schedule(xplane_path, module_prefix="jit_jax_train_step"):
  """The largest HLO module whose name starts with `module_prefix` among those an XPlane file
  holds (XProf's metadata plane), as its scheduled instructions, calls (command buffers)
  expanded: [(name, opcode, custom_call_target, op_name)]."""
  from tensorflow.compiler.xla.service import hlo_pb2  # pylint: disable=g-import-not-at-top
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top
  space = xplane_pb2.XSpace()
  with open(xplane_path, "rb") as f:
    space.ParseFromString(f.read())
  best = b""
  for plane in space.planes:
    for meta in plane.event_metadata.values():
      if meta.name.startswith(module_prefix):
        for stat in meta.stats:
          if len(stat.bytes_value) > len(best):
            best = stat.bytes_value
  if not best:
    raise ValueError(f"no HLO module named {module_prefix}* in {xplane_path}")
  proto = hlo_pb2.HloProto()
  proto.ParseFromString(best)
  module = proto.hlo_module
  by_id = {i.id: i for c in module.computations for i in c.instructions}
  computations = {c.id: c for c in module.computations}
  sequences = module.schedule.sequences
  rows = []

  def walk(cid):
    ids = (sequences[cid].instruction_ids if cid in sequences
           else [i.id for i in computations[cid].instructions])
    for iid in ids:
      ins = by_id[iid]
      if ins.opcode == "call":
        for sub in ins.called_computation_ids:
          walk(sub)
      elif ins.opcode not in ("parameter", "get-tuple-element", "tuple", "constant", "bitcast"):
        rows.append((ins.name, ins.opcode, ins.custom_call_target, ins.metadata.op_name))
  walk(module.entry_computation_id)
  return rows


def attribute(kernels, rows):
  """({row index: us}, gaps shared by several custom calls): each kernel's duration given to
  the scheduled instruction it ran for. A kernel named after an instruction (XLA's fusions:
  'loop_add_fusion.3' runs as 'loop_add_fusion_3') is that instruction's; the library kernels
  between two such kernels go to the custom call scheduled between the two instructions (the
  first where several are; None where there is none). A CUDA graph may run independent nodes
  out of schedule order, and XLA names a kernel shared by identical fusions after the first, so
  a named kernel found earlier in the schedule than the one before it is counted but moves
  nothing. One traced step only (`bench --profile_steps 1`): the kernels of a second step
  would go to the end of the first."""
  position = {r[0].replace(".", "_"): i for i, r in enumerate(rows)}
  named = {k["name"] for k in kernels if k["name"] in position}
  spent = collections.Counter()
  shared = 0
  last, pending = -1, []

  def settle(upto):
    nonlocal shared
    if not pending:
      return
    calls = [i for i in range(last + 1, upto) if rows[i][1] == "custom-call"]
    calls = calls or [i for i in range(last + 1, upto)
                      if rows[i][0].replace(".", "_") not in named]
    shared += len(calls) > 1
    for k in pending:
      spent[calls[0] if calls else None] += k.get("dur", 0)
    pending.clear()
  for k in sorted(kernels, key=lambda e: e["ts"]):
    i = position.get(k["name"])
    if i is None:
      pending.append(k)
      continue
    if i > last:
      settle(i)
      last = i
    spent[i] += k.get("dur", 0)
  settle(len(rows))
  return spent, shared


def layer_key(row):
  """(layer path with stage-local indices as '*', pass, call) of a scheduled instruction."""
  name, opcode, target, op_name = row
  path = re.sub(r"^jit\([^)]*\)/", "", op_name)
  backward = "transpose(jvp(" in path
  path = re.sub(r"(transpose\()?jvp\(", "", path).replace(")", "")
  path = re.sub(r"(sdm|fuse|res)\d+", r"\1*", path)
  call = target.replace("__cudnn$", "cudnn ") if opcode == "custom-call" else (
      "xla " + re.sub(r"\.\d+$", "", name))
  return path, "backward" if backward else "forward", call


def report_layers(spent, rows, n):
  groups, counts = collections.Counter(), collections.Counter()
  for i, us in spent.items():
    key = layer_key(rows[i]) if i is not None else ("(unattributed)", "", "")
    groups[key] += us
    counts[key] += 1
  total = sum(groups.values())
  lines = [f"top {n} of {len(groups)} (layer, pass, call) groups, {total / 1000:.2f} ms in all:"]
  for (path, direction, call), us in groups.most_common(n):
    lines.append(f"  {us / 1000:7.2f} ms {counts[(path, direction, call)]:4d}x  {direction:8s} "
                 f"{call:34s} {path}")
  return "\n".join(lines)


_CUDNN_TARGET = re.compile(r'custom_call_target="__cudnn\$(\w+)"')
_SHAPE = re.compile(r"\b([a-z]+\d*\[[\d,]*\])")


def layer_times(spent, rows, depth):
  """{(layer path cut to its first `depth` parts, pass): ms} from `attribute`'s result."""
  times = collections.Counter()
  for i, us in spent.items():
    if i is None:
      key = ("(unattributed)", "")
    else:
      path, direction, _ = layer_key(rows[i])
      key = ("/".join([p for p in path.split("/") if p][:depth]) or "(unnamed)", direction)
    times[key] += us / 1000
  return times


def report_compare(a, b, n):
  """The `n` (layer, pass) groups with the most time in either of `layer_times` results a and
  b: ms in each and b - a; then the totals."""
  keys = sorted(set(a) | set(b), key=lambda k: (-max(a[k], b[k]), k))
  lines = [f"{'layer':58s} {'pass':8s} {'A ms':>7s} {'B ms':>7s} {'B-A':>7s}"]
  for k in keys[:n]:
    lines.append(f"{k[0][:58]:58s} {k[1]:8s} {a[k]:7.2f} {b[k]:7.2f} {b[k] - a[k]:+7.2f}")
  ta, tb = sum(a.values()), sum(b.values())
  lines.append(f"{'all':58s} {'':8s} {ta:7.2f} {tb:7.2f} {tb - ta:+7.2f}")
  return "\n".join(lines)


def xplane_files(path):
  """The .xplane.pb files under `path` (a profile directory), or `path` itself if a file."""
  return [path] if os.path.isfile(path) else sorted(
      glob.glob(os.path.join(path, "**", "*.xplane.pb"), recursive=True))


def attributed(xplane_path, events):
  """(rows, {row index: us}, shared gaps): `attribute` of the device-stream kernels of `events`
  (the file's trace events) to the file's scheduled HLO instructions."""
  rows = hlo_schedule(xplane_path)
  kernels = [k for ks in device_streams(events).values() for k in ks]
  return (rows, *attribute(kernels, rows))


def _pop_int(args, name, default):
  """(the integer after `name` in args, or `default`; args without the two)."""
  if name not in args:
    return default, args
  i = args.index(name)
  return int(args[i + 1]), args[:i] + args[i + 2:]


def cudnn_convs(hlo_text):
  """{(target, result shape, operand shapes, window, dim_labels): count} of the cuDNN
  convolution custom-calls in optimized HLO text (layouts and names left out)."""
  found = collections.Counter()
  for line in hlo_text.splitlines():
    target = _CUDNN_TARGET.search(line)
    if not target or " custom-call(" not in line:
      continue
    lhs, rest = line.split(" custom-call(", 1)
    result = _SHAPE.findall(lhs.split("=", 1)[1])
    operands = _SHAPE.findall(rest.split(")", 1)[0])
    window = re.search(r"window=\{([^}]*)\}", rest)
    labels = re.search(r"dim_labels=([\w>-]+)", rest)
    found[(target.group(1), result[0] if result else "?", " ".join(operands),
           window.group(1) if window else "", labels.group(1) if labels else "")] += 1
  return found


def report_cudnn_convs(found):
  return "\n".join(f"{n:4d}  {target:22s} {result} <- {operands}  window {window or '-'}  "
                   f"{labels}" for (target, result, operands, window, labels), n in
                   sorted(found.items(), key=lambda kv: (-kv[1], kv[0])))


def main(args):
  if args[:1] == ["--cudnn_convs"] and len(args) == 2:
    files = sorted(glob.glob(os.path.join(args[1], "*after_optimizations.txt")))
    if not files:
      sys.exit(f"error: no *after_optimizations.txt in {args[1]} (XLA_FLAGS=--xla_dump_to=DIR)")
    found = collections.Counter()
    for f in files:
      with open(f) as fh:
        found.update(cudnn_convs(fh.read()))
    print(report_cudnn_convs(found))
    return
  if args[:1] == ["--compare"]:
    depth, rest = _pop_int(args[1:], "--depth", 3)
    top, rest = _pop_int(rest, "--top", 40)
    if len(rest) != 2:
      sys.exit(__doc__)
    times = []
    for path in rest:
      files = xplane_files(path)
      if len(files) != 1:
        sys.exit(f"error: --compare needs one .xplane.pb in {path}, found {len(files)}")
      rows, spent, _ = attributed(files[0], trace_events(files[0]))
      times.append(layer_times(spent, rows, depth))
    print(f"A: {rest[0]}\nB: {rest[1]}")
    print(report_compare(*times, top))
    return
  ops, args = _pop_int(args, "--ops", 0)
  layers, args = _pop_int(args, "--layers", 0)
  paths = args
  if not paths:
    sys.exit(__doc__)
  for path in paths:
    files = xplane_files(path)
    if not files:
      sys.exit(f"error: no .xplane.pb file in {path}")
    for f in files:
      print(f"== {f}")
      events = trace_events(f)
      print(report(summarize(events)))
      if layers:
        rows, spent, shared = attributed(f, events)
        print(report_layers(spent, rows, layers))
        print(f"  ({shared} gaps between fusions held several custom calls: their kernels went "
              "to the first)")
      if ops:
        print(f"top {ops} HLO ops by self time (outside command buffers):")
        print(report_ops(hlo_rows(hlo_stats(f)), ops))


if __name__ == "__main__":
  main(sys.argv[1:])
