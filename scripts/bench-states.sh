#!/usr/bin/env bash
# Side-by-side timing of the state pipeline against TensorState 0.4.0 (the paper authors'
# package), in one run on one machine, alternating ours and theirs, reporting medians.
#
# Both measure the authors' example, LeNet-5 (20,50,100) trained for EPOCHS epochs, on the
# 10k MNIST test images. TensorState: capture (PyTorch forward pass with its hooks) and its
# counting + scoring, as in the peer script ts_state_timing.py. Ours: `dump-states` (the
# capture), `count-states` + `score-aiq` (counting and scoring) through a counts file and as a
# pipe (`count-states S | score-aiq`), `score-aiq` straight on the states, and the whole pipe with the peak memory of each stage. Wall times (medians) and CPU
# times (user + system, all threads; TensorState's from its own process, ours from the child
# processes) are both reported: on a shared, loaded machine the CPU ratio is the steadier one.
#
# Usage: scripts/bench-states.sh TS_DIR [ROUNDS] [EPOCHS] [THREADS]
#   TS_DIR: a TensorState build (see the peer's build_tensorstate.sh) whose venv also has
#           torch: TS_DIR/venv/bin/python, TS_DIR/build/TensorState.
# Env: BIN (our release binaries, default target/release), DATA (default data/mnist),
#      WORK (scratch, default /dev/shm/aiq-bench-states: tmpfs, so disk speed is out of it),
#      BASE_BIN (optional: another build's count-states and score-aiq, e.g. before a change,
#      timed in the same rounds as base_count_score and base_score_states).
set -euo pipefail
TS_DIR=${1:?usage: bench-states.sh TS_DIR [ROUNDS] [EPOCHS] [THREADS]}
ROUNDS=${2:-5}; EPOCHS=${3:-1}; THREADS=${4:-2}
BIN=${BIN:-target/release}; DATA=${DATA:-data/mnist}; WORK=${WORK:-/dev/shm/aiq-bench-states}
mkdir -p "$WORK"
MODEL="$WORK/lenet5_20_50_100.bin"
[ -s "$MODEL" ] || "$BIN/train" --arch lenet5 --widths 20,50,100 --max-epochs "$EPOCHS" --seed 1 \
    --data "$DATA" --threads "$THREADS" -o "$MODEL"
BASE_BIN=${BASE_BIN:-}
export BIN DATA WORK MODEL ROUNDS EPOCHS THREADS BASE_BIN
PYTHONPATH="$TS_DIR/build" "$TS_DIR/venv/bin/python" - <<'PY'
import json, os, resource, statistics, subprocess, sys, time

B, D, W, M, BB = (os.environ[k] for k in ("BIN", "DATA", "WORK", "MODEL", "BASE_BIN"))
rounds, epochs, th = (int(os.environ[k]) for k in ("ROUNDS", "EPOCHS", "THREADS"))

# The peer script's model, data and measurement (ts_state_timing.py), verbatim in substance.
# Every round measures TensorState in a fresh process, as the peer script does: hooks
# attached to a model in a process that has measured before would pile up (TensorState adds
# them to the model, never replaces them) and a warm process would time differently.
COMMON = r"""
import os, struct, sys, time, json, numpy as np, torch, torch.nn as nn, torch.nn.functional as F
def idx(path):
    with open(path, "rb") as f:
        magic, = struct.unpack(">I", f.read(4)); nd = magic & 0xff
        dims = struct.unpack(">" + "I" * nd, f.read(4 * nd))
        return np.frombuffer(f.read(), dtype=np.uint8).reshape(dims)
class LeNet5(nn.Module):
    def __init__(s):
        super().__init__()
        s.conv_1 = nn.Conv2d(1, 20, 5); s.conv_2 = nn.Conv2d(20, 50, 5); s.conv_3 = nn.Conv2d(50, 100, 4); s.pred = nn.Linear(100, 10)
    def forward(s, x):
        x = F.max_pool2d(F.elu(s.conv_1(x)), 2); x = F.max_pool2d(F.elu(s.conv_2(x)), 2)
        return s.pred(F.elu(s.conv_3(x)).flatten(1))
D, W, th = os.environ["DATA"], os.environ["WORK"], int(os.environ["THREADS"])
torch.set_num_threads(th); torch.manual_seed(0)
"""
TRAIN = COMMON + r"""
xtr = torch.tensor(idx(f"{D}/train-images.idx3-ubyte"), dtype=torch.float32).div_(255).unsqueeze(1)
ytr = torch.tensor(idx(f"{D}/train-labels.idx1-ubyte"), dtype=torch.long)
m = LeNet5(); opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9, nesterov=True, weight_decay=5e-4)
for ep in range(int(os.environ["EPOCHS"])):
    perm = torch.randperm(60000)
    for i in range(0, 60000, 200):
        b = perm[i:i + 200]; loss = F.cross_entropy(m(xtr[b]), ytr[b]); opt.zero_grad(); loss.backward(); opt.step()
torch.save(m.state_dict(), sys.argv[1])
"""
ROUND = COMMON + r"""
import TensorState as ts
xte = torch.tensor(idx(f"{D}/t10k-images.idx3-ubyte"), dtype=torch.float32).div_(255).unsqueeze(1)
yte = torch.tensor(idx(f"{D}/t10k-labels.idx1-ubyte"), dtype=torch.long)
m = LeNet5(); m.load_state_dict(torch.load(sys.argv[1])); m.eval()
c0 = time.process_time(); t0 = time.perf_counter()
em = ts.build_efficiency_model(m, attach_to=["Conv2d"], method="after")
correct = 0
with torch.no_grad():
    for i in range(0, 10000, 200):
        correct += (em(xte[i:i + 200]).argmax(1) == yte[i:i + 200]).sum().item()
t1 = time.perf_counter(); c1 = time.process_time()
layers = [(int(l.state_count), len(l.counts()), float(l.efficiency())) for l in em.efficiency_layers]
eff = ts.network_efficiency(em); aiq = ts.aIQ(eff, correct / 10000, 2)
t2 = time.perf_counter(); c2 = time.process_time()
print(json.dumps([t1 - t0, t2 - t1, c1 - c0, c2 - c1]))
"""
TS_MODEL = f"{W}/ts_lenet5_{epochs}.pt"
if not os.path.exists(TS_MODEL):
    subprocess.run([sys.executable, "-c", TRAIN, TS_MODEL], check=True)

def cpu_children():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime

def tensorstate():
    out = subprocess.run([sys.executable, "-c", ROUND, TS_MODEL], check=True, stdout=subprocess.PIPE, text=True)
    capture, count_score, cpu_capture, cpu_count_score = json.loads(out.stdout)
    cpu["ts_capture"].append(cpu_capture); cpu["ts_count_score"].append(cpu_count_score)
    return capture, count_score

def run(*stages, out=None, key=None, fresh=(), seq=False):
    # Our stages are spawned directly, not through /bin/sh: the shell's own start (about
    # 1.5 ms here) is no more our tools' time than Python's start is TensorState's. Stages
    # run as a pipeline (each one's stdout into the next one's stdin, the last one's into
    # `out` or /dev/null), or one after another with `seq`, each as (argv, destination).
    # Every round writes new files, as the first one does: the previous round's output is
    # deleted before the clock starts (truncating a 22 MB file in place frees its pages
    # inside the timed command, which a run on a new path never pays).
    for f in (out, *fresh):
        if f and os.path.isfile(f):  # a regular file: never a device such as /dev/null
            os.unlink(f)
    t, c = time.perf_counter(), cpu_children()
    if seq:
        for argv, dest in stages:
            with open(dest, "wb") if dest else open(os.devnull, "wb") as d:
                subprocess.run(argv, check=True, stdout=d)
    else:
        with open(out, "wb") if out else open(os.devnull, "wb") as f:
            procs, prev = [], None
            for i, argv in enumerate(stages):
                last = i == len(stages) - 1
                p = subprocess.Popen(argv, stdin=prev, stdout=f if last else subprocess.PIPE)
                if prev is not None:
                    prev.close()
                prev = p.stdout
                procs.append(p)
            for p in procs:
                if p.wait() != 0:
                    raise SystemExit(f"{p.args} failed")
    if key:
        cpu[key].append(cpu_children() - c)
    return time.perf_counter() - t

S, C = f"{W}/states.bin", f"{W}/counts.bin"
th_args = ["--threads", str(th)]
dump = [f"{B}/dump-states", *th_args, "--model", M, "--data", D]
res = {k: [] for k in ("ts_capture", "ts_count_score", "dump_states", "count_score", "count_score_pipe", "score_states", "pipe")}
if BB:
    res.update(base_count_score=[], base_score_states=[])
cpu = {k: [] for k in res if k != "pipe"}
mem = []
for r in range(rounds):
    a, b = tensorstate(); res["ts_capture"].append(a); res["ts_count_score"].append(b)
    res["dump_states"].append(run(dump, out=S, key="dump_states"))
    # Our measurements after the capture, in the opposite order every other round: the
    # first one after `dump-states` (which has just freed its memory) pays more for fresh
    # pages on this host, and no stage or build should always be the one to pay.
    steps = []
    for tag, bin_ in (("", B), ("base_", BB)) if BB else (("", B),):
        count, score = [f"{bin_}/count-states", *th_args], f"{bin_}/score-aiq"
        steps.append((tag + "count_score", ((count + [S], C), ([score, C], None)), dict(seq=True, fresh=(C,))))
        if not tag:
            steps.append(("count_score_pipe", (count + [S], [score]), {}))
        steps.append((tag + "score_states", ([score, *th_args, S],), {}))
    for key, stages, kw in steps if r % 2 == 0 else reversed(steps):
        res[key].append(run(*stages, key=key, **kw))
    timed = lambda i, argv: ["/usr/bin/time", "-f", "%M", "-o", f"{W}/m{i}", *argv]
    res["pipe"].append(run(timed(1, dump), timed(2, [f"{B}/count-states", *th_args]), timed(3, [f"{B}/score-aiq", "--json"])))
    mem.append(sum(int(open(f"{W}/m{i}").read().split()[-1]) for i in (1, 2, 3)) / 1024)
med = {k: statistics.median(v) for k, v in res.items()}
print(json.dumps({
    "rounds": rounds, "threads": th, "load_before": os.getloadavg(),
    "median_s": {k: round(v, 4) for k, v in med.items()},
    "all_s": {k: [round(x, 4) for x in v] for k, v in res.items()},
    "median_cpu_s": {k: round(statistics.median(v), 4) for k, v in cpu.items()},
    "ratios": {"capture_ts_over_dump_states": round(med["ts_capture"] / med["dump_states"], 2),
               "count_score_ts_over_ours": round(med["ts_count_score"] / med["count_score"], 2),
               "count_score_ts_over_ours_pipe": round(med["ts_count_score"] / med["count_score_pipe"], 2),
               "count_score_ts_over_score_states": round(med["ts_count_score"] / med["score_states"], 2),
               "cpu_count_score_ts_over_ours": round(statistics.median(cpu["ts_count_score"]) / statistics.median(cpu["count_score"]), 2),
               "cpu_capture_ts_over_dump_states": round(statistics.median(cpu["ts_capture"]) / statistics.median(cpu["dump_states"]), 2)},
    # Each round's TensorState over ours, then the median: the two ran a few seconds apart,
    # so a round's ratio shares the host's state of the moment, where a ratio of medians
    # can pair a fast stretch of one with a slow stretch of the other.
    "paired_ratio_medians": {
        f"{ts}_over_{ours}": round(statistics.median(a / b for a, b in zip(res[ts], res[ours])), 2)
        for ts, ours in (("ts_capture", "dump_states"), ("ts_count_score", "count_score"),
                         ("ts_count_score", "count_score_pipe"), ("ts_count_score", "score_states"))},
    "pipeline_peak_mib_sum_of_stages": round(max(mem), 1),
}, indent=1))
subprocess.run(f"{B}/score-aiq {S}", shell=True, check=True)
PY
