#!/usr/bin/env python3
"""bench/experiment_report.py: the table and plots of bench/experiment.sh's folder.

Reads DIR/<arm>/{eval-step*.json, info.json, log.csv, run.json} and writes
  DIR/results.csv  arm, step, images, training GFLOP so far, FD, samples, held-out loss per stage
  DIR/fd.svg       FD against images seen and against training FLOPs, one line per arm
  DIR/results.md   the table: FD at every snapshot, cost per image, speed
Standard library only. Usage: bench/experiment_report.py DIR
"""
import csv
import glob
import json
import math
import os
import re
import sys

ARMS = ["unified", "separate", "ms-edm", "ms-cluster"]
LABEL = {
    "unified": "unified (mini)",
    "separate": "separate (3 x mini)",
    "ms-edm": "multistage (EDM bounds)",
    "ms-cluster": "multistage (clustered)",
}
COLOR = {"unified": "#1f77b4", "separate": "#7f7f7f", "ms-edm": "#d62728", "ms-cluster": "#2ca02c"}
P_MEAN, P_STD = -1.2, 1.2  # EDM's training sigma law: ln sigma ~ N(P_MEAN, P_STD^2)


def stage_probabilities(boundaries):
    """The share of training batches each stage gets under the lognormal policy (msdiff train's
    default): the sigma law's mass between consecutive boundaries."""
    cdf = [0.0] + [0.5 * (1 + math.erf((math.log(b) - P_MEAN) / (P_STD * math.sqrt(2)))) for b in boundaries] + [1.0]
    return [cdf[i + 1] - cdf[i] for i in range(len(cdf) - 1)]


def train_flop_per_image(info):
    """Expected training FLOPs per image: a step runs the forward pass, the input gradients and the
    weight gradients, each about the forward's multiply-adds, so 3 x 2 FLOP per MAC, weighted by how
    often each stage's network is trained under the lognormal policy (bench/experiment.sh's; a run
    with --policy uniform would need equal weights)."""
    macs = info["macs_per_image"]
    p = stage_probabilities(info["config"]["boundaries"]) if len(macs) > 1 else [1.0]
    return 6.0 * sum(pi * m for pi, m in zip(p, macs))


def read_arm(d, arm):
    run = os.path.join(d, arm)
    if not os.path.isdir(run):
        return None
    info = json.load(open(os.path.join(run, "info.json")))
    batch = json.load(open(os.path.join(run, "run.json")))["batch"]
    flop = train_flop_per_image(info)
    rows = []
    for f in sorted(glob.glob(os.path.join(run, "eval-step*.json"))):
        step = int(re.search(r"step(\d+)", f).group(1))
        e = json.load(open(f))
        images = step * batch
        rows.append({
            "arm": arm, "step": step, "images": images, "train_gflop": images * flop / 1e9, "fd": e["fd"],
            "n": e["generated"], "losses": [s["loss"] for s in e.get("stages", [])],
        })
    rows.sort(key=lambda r: r["images"])
    # Training time: log.csv's seconds restart with every process (a --resume), so add up the
    # segments, each ending where the next one's clock starts again.
    log = list(csv.DictReader(open(os.path.join(run, "log.csv"))))
    seconds, prev = 0.0, 0.0
    for row in log:
        t = float(row["seconds"])
        if t < prev:
            seconds += prev
        prev = t
    seconds += prev
    seen = float(log[-1]["images"]) if log else float("nan")
    return {"arm": arm, "rows": rows, "flop": flop, "info": info, "seconds": seconds, "images": seen}


# ---------------------------------------------------------------------------------------------------
# The plot, by hand: two panels, log-scale FD.

def nice_ticks(lo, hi, n=5):
    step = 10 ** math.floor(math.log10((hi - lo) / n))
    for m in (1, 2, 5, 10):
        if (hi - lo) / (step * m) <= n:
            step *= m
            break
    t = math.ceil(lo / step) * step
    out = []
    while t <= hi + 1e-9 * step:
        out.append(t)
        t += step
    return out


def panel(arms, key, xlabel, x0, y0, w, h, ylo, yhi):
    xs = [r[key] for a in arms for r in a["rows"]]
    xhi = max(xs) * 1.04
    X = lambda v: x0 + w * v / xhi
    Y = lambda v: y0 + h - h * (math.log10(v) - math.log10(ylo)) / (math.log10(yhi) - math.log10(ylo))
    s = [f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#444"/>']
    for t in nice_ticks(0, xhi):
        s.append(f'<line x1="{X(t):.1f}" y1="{y0 + h}" x2="{X(t):.1f}" y2="{y0 + h + 5}" stroke="#444"/>')
        s.append(f'<text x="{X(t):.1f}" y="{y0 + h + 18}" text-anchor="middle">{t:g}</text>')
    d = 10 ** math.floor(math.log10(ylo))
    while d <= yhi:
        for m in (1, 2, 5):
            v = d * m
            if ylo <= v <= yhi:
                s.append(f'<line x1="{x0}" y1="{Y(v):.1f}" x2="{x0 + w}" y2="{Y(v):.1f}" stroke="#ddd"/>')
                s.append(f'<text x="{x0 - 6}" y="{Y(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
        d *= 10
    for a in arms:
        pts = [(X(r[key]), Y(r["fd"])) for r in a["rows"]]
        c = COLOR[a["arm"]]
        s.append('<polyline fill="none" stroke-width="2" stroke="%s" points="%s"/>'
                 % (c, " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)))
        s += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{c}"/>' for x, y in pts]
    s.append(f'<text x="{x0 + w / 2}" y="{y0 + h + 36}" text-anchor="middle">{xlabel}</text>')
    return s


def plot(arms, path):
    fds = [r["fd"] for a in arms for r in a["rows"]]
    ylo = 10 ** math.floor(math.log10(min(fds)))
    yhi = 10 ** math.ceil(math.log10(max(fds)))
    W, H = 980, 430
    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" '
         'font-size="12">', f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="14">Frechet distance of classifier '
         'features (lower is better) during training, mini scale, Fashion-MNIST</text>',
         f'<text transform="translate(18,{60 + 150}) rotate(-90)" text-anchor="middle">FD (log scale)</text>']
    for a in arms:
        for r in a["rows"]:
            r["kimages"] = r["images"] / 1e3
            r["tflop"] = r["train_gflop"] / 1e3
    s += panel(arms, "kimages", "training images seen (thousands)", 70, 40, 390, 300, ylo, yhi)
    s += panel(arms, "tflop", "training FLOPs (TFLOP, expected)", 560, 40, 390, 300, ylo, yhi)
    for i, a in enumerate(arms):
        x, y = 70 + 225 * (i % 4), H - 18
        s.append(f'<line x1="{x}" y1="{y - 4}" x2="{x + 24}" y2="{y - 4}" stroke="{COLOR[a["arm"]]}" stroke-width="3"/>')
        s.append(f'<text x="{x + 30}" y="{y}">{LABEL[a["arm"]]}</text>')
    s.append("</svg>")
    open(path, "w").write("\n".join(s) + "\n")


# ---------------------------------------------------------------------------------------------------

def main():
    if len(sys.argv) != 2:
        sys.exit("usage: bench/experiment_report.py DIR")
    d = sys.argv[1]
    arms = [a for a in (read_arm(d, arm) for arm in ARMS) if a and a["rows"]]
    if not arms:
        sys.exit(f"experiment_report: no evaluated arm under {d}")
    with open(os.path.join(d, "results.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arm", "step", "images", "train_gflop", "fd", "samples", "loss_stage0", "loss_stage1",
                    "loss_stage2"])
        for a in arms:
            for r in a["rows"]:
                losses = [f"{x:.3f}" for x in r["losses"]][:3]
                w.writerow([a["arm"], r["step"], r["images"], f"{r['train_gflop']:.1f}", f"{r['fd']:.4f}", r["n"]]
                           + losses + [""] * (3 - len(losses)))
    plot(arms, os.path.join(d, "fd.svg"))

    points = sorted({r["images"] for a in arms for r in a["rows"]})
    md = ["| arm | " + " | ".join(f"{p / 1e3:g}k" for p in points) + " | GFLOP per training image | "
          "training images/s |",
          "|---|" + "---:|" * (len(points) + 2)]
    for a in arms:
        by = {r["images"]: r for r in a["rows"]}
        cells = [f"{by[p]['fd']:.2f}" if p in by else "" for p in points]
        speed = a["images"] / a["seconds"] if a["seconds"] > 0 else float("nan")
        md.append(f"| {LABEL[a['arm']]} | " + " | ".join(cells) + f" | {a['flop'] / 1e9:.2f} | {speed:.0f} |")
    n_last = {a["arm"]: a["rows"][-1]["n"] for a in arms}
    n_mid = {r["n"] for a in arms for r in a["rows"][:-1]}
    md.append("")
    md.append(f"FD from {', '.join(str(n) for n in sorted(n_mid)) or '-'} samples at intermediate snapshots and "
              f"{', '.join(sorted({str(n) for n in n_last.values()}))} at the last (Heun, 18 steps, 35 evaluations), "
              "against as many Fashion-MNIST test images.")
    open(os.path.join(d, "results.md"), "w").write("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"wrote {d}/results.csv, {d}/fd.svg, {d}/results.md")


if __name__ == "__main__":
    main()
