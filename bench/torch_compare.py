#!/usr/bin/env python3
# bench/torch_compare.py: msdiff's network written again in PyTorch, to check msdiff's denoiser against
# it (`compare`) and to time PyTorch on the same work (`bench`). A benchmark tool, not part of make check.
#
# Run it with Debian's interpreter, which has python3-torch and numpy:
#     /usr/bin/python3 bench/torch_compare.py compare
#     /usr/bin/python3 bench/torch_compare.py bench --config mini --batch 64 --threads 2
# (the `python3` first on PATH may be another one without torch). Nothing else is needed: safetensors
# files are read and written here with struct, json and numpy.
#
# What it holds, in order: safetensors I/O; the network (docs/METHOD.md, Architecture: EDM's SongUNet with
# the DDPM++ settings, the authors' MultistageUNet, separate networks), following the computation
# docs/DESIGN.md describes and checked name for name against msdiff's checkpoints; EDM/VP
# preconditioning and the EDM loss (docs/METHOD.md, Preconditioning and losses; common/model/precond.c); the three
# subcommands (compare, bench, selftest).
# What it does not hold: any training data, samplers, or msdiff's own RNG (inputs come from numpy).
import argparse
import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import types

try:
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    IMPORT_ERROR = None
except ImportError as e:  # keep --help working; main() reports the error
    IMPORT_ERROR = e
    nn = types.SimpleNamespace(Module=object)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GN_EPS = 1e-6                   # every GroupNorm (common/model/unet.c)
SKIP_SCALE = math.sqrt(0.5)     # EDM's skip_scale
VP_BETA_D, VP_BETA_MIN, VP_M = 19.9, 0.1, 1000   # EDM's VPPrecond (common/model/precond.h)
VP_EPS_T = 1e-5
P_MEAN, P_STD = -1.2, 1.2       # EDM loss: ln sigma ~ N(P_mean, P_std^2)

# ---------------------------------------------------------------------------------------------------
# safetensors: u64 little-endian header length, a JSON header {name: {dtype, shape, data_offsets}} with
# an optional "__metadata__" of strings, then the data (offsets relative to its start).


def st_read(path):
    """-> ({name: float32 ndarray} in header order, {metadata key: string})."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", None) or {}
    data = memoryview(raw)[8 + n:]
    tensors = {}
    for name, e in header.items():
        buf = data[e["data_offsets"][0]:e["data_offsets"][1]]
        if e["dtype"] == "BF16":  # the top half of a float32
            a = (np.frombuffer(buf, "<u2").astype(np.uint32) << 16).view(np.float32)
        elif e["dtype"] in ("F32", "F16", "F64"):
            a = np.frombuffer(buf, {"F32": "<f4", "F16": "<f2", "F64": "<f8"}[e["dtype"]])
        else:
            raise ValueError(f"{path}: tensor '{name}' has dtype {e['dtype']}, expected F32, F16 or BF16")
        tensors[name] = a.astype(np.float32).reshape(e["shape"])
    return tensors, meta


def st_write(path, tensors, metadata=None):
    """Write {name: array} as F32 (in dict order) with string metadata, atomically, as msdiff does."""
    header = {"__metadata__": dict(metadata)} if metadata else {}
    blobs, offset = [], 0
    for name, a in tensors.items():
        b = np.ascontiguousarray(a, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # spaces, so the data starts 8-byte aligned
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))
    os.replace(path + ".tmp", path)

# ---------------------------------------------------------------------------------------------------
# The network. Config keys are those of msdiff's JSON (common/model/config.c). Layer by layer this is EDM's
# networks.py: Conv2d, Linear, GroupNorm, UNetBlock, SongUNet; module names give the state_dict names.


def gn_groups(cfg, channels):
    """GroupNorm groups for C channels: min(gn_groups, C // gn_min_channels), at least 1."""
    return max(1, min(cfg["gn_groups"], channels // cfg["gn_min_channels"]))


class Linear(nn.Module):
    def __init__(self, cin, cout, init_scale=1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(cout, cin))  # (out, in)
        self.bias = nn.Parameter(torch.zeros(cout))
        self.init_scale = init_scale

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class Conv2d(nn.Module):
    """EDM's Conv2d: an optional 2x resampling with the box filter f = [1,1]^T[1,1]/4, then a k x k
    convolution with zero padding k//2. Down: depthwise conv with f at stride 2 = the mean of each 2x2
    block (avg_pool2d). Up: depthwise transposed conv with 4f at stride 2 = each pixel copied into a 2x2
    block (nearest). EDM keeps f as the buffer `resample_filter`, so checkpoints carry it."""

    def __init__(self, cin, cout, k, up=False, down=False, init_scale=1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(cout, cin, k, k))  # (out, in, k, k)
        self.bias = nn.Parameter(torch.zeros(cout))
        self.up, self.down, self.init_scale = up, down, init_scale
        if up or down:
            self.register_buffer("resample_filter", torch.full((1, 1, 2, 2), 0.25))

    def forward(self, x):
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        if self.down:
            x = F.avg_pool2d(x, 2)
        return F.conv2d(x, self.weight, self.bias, padding=self.weight.shape[-1] // 2)


class GroupNorm(nn.Module):
    def __init__(self, cfg, channels):
        super().__init__()
        self.groups = gn_groups(cfg, channels)
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        return F.group_norm(x, self.groups, self.weight, self.bias, eps=GN_EPS)


class UNetBlock(nn.Module):
    """EDM's UNetBlock with the DDPM++ settings (one head, skip_scale sqrt(1/2), resample_proj)."""

    def __init__(self, cfg, cin, cout, emb_channels, up=False, down=False, attention=False):
        super().__init__()
        self.cin, self.dropout = cin, cfg["dropout"]
        self.norm0 = GroupNorm(cfg, cin)
        self.conv0 = Conv2d(cin, cout, 3, up=up, down=down)
        self.affine = Linear(emb_channels, cout)
        self.norm1 = GroupNorm(cfg, cout)
        self.conv1 = Conv2d(cout, cout, 3, init_scale=1e-5)
        self.skip = Conv2d(cin, cout, 1, up=up, down=down) if cin != cout or up or down else None
        self.attention = attention
        if attention:
            self.norm2 = GroupNorm(cfg, cout)
            self.qkv = Conv2d(cout, 3 * cout, 1, init_scale=math.sqrt(0.2))
            self.proj = Conv2d(cout, cout, 1, init_scale=1e-5)

    def forward(self, x, emb):
        # x: (N, cin, H, W), emb: (N, E) -> (N, cout, H', W')
        h = self.conv0(F.silu(self.norm0(x)))
        h = F.silu(self.norm1(h + self.affine(emb)[:, :, None, None]))  # the noise level enters here
        h = self.conv1(F.dropout(h, p=self.dropout, training=self.training))
        x = (h + (self.skip(x) if self.skip is not None else x)) * SKIP_SCALE
        if not self.attention:
            return x
        # one head; qkv channel 3c + j holds q (j = 0), k (1), v (2) of channel c
        N, C, H, W = x.shape
        q, k, v = self.qkv(self.norm2(x)).reshape(N, C, 3, H * W).unbind(2)
        w = torch.einsum("ncq,nck->nqk", q, k / math.sqrt(C)).softmax(dim=2)  # (N, HW, HW)
        a = torch.einsum("nqk,nck->ncq", w, v)                                 # (N, C, HW)
        return (self.proj(a.reshape(N, C, H, W)) + x) * SKIP_SCALE


def build_encoder(cfg):
    """SongUNet's encoder: -> (ModuleDict, channel counts of the skips in push order)."""
    C, R, E = cfg["model_channels"], cfg["img_resolution"], cfg["model_channels"] * cfg["channel_mult_emb"]
    enc, skips, cout = nn.ModuleDict(), [], cfg["in_channels"]
    for level, mult in enumerate(cfg["channel_mult"]):
        r = R >> level
        if level == 0:
            enc[f"{r}x{r}_conv"] = Conv2d(cout, C, 3)
            cout = C
        else:
            enc[f"{r}x{r}_down"] = UNetBlock(cfg, cout, cout, E, down=True)
        skips.append(cout)
        for i in range(cfg["num_blocks"]):
            cin, cout = cout, C * mult
            enc[f"{r}x{r}_block{i}"] = UNetBlock(cfg, cin, cout, E, attention=r in cfg["attn_resolutions"])
            skips.append(cout)
    return enc, skips


def build_decoder(cfg, width, skips):
    """SongUNet's decoder of base width `width`, popping the encoder's skips from the last."""
    R, E = cfg["img_resolution"], cfg["model_channels"] * cfg["channel_mult_emb"]
    dec, skips, cout = nn.ModuleDict(), list(skips), skips[-1]
    n_levels, nb = len(cfg["channel_mult"]), cfg["num_blocks"]
    for level in reversed(range(n_levels)):
        r = R >> level
        if level == n_levels - 1:
            dec[f"{r}x{r}_in0"] = UNetBlock(cfg, cout, cout, E, attention=True)
            dec[f"{r}x{r}_in1"] = UNetBlock(cfg, cout, cout, E)
        else:
            dec[f"{r}x{r}_up"] = UNetBlock(cfg, cout, cout, E, up=True)
        for i in range(nb + 1):
            cin, cout = cout + skips.pop(), width * cfg["channel_mult"][level]
            attn = i == nb and r in cfg["attn_resolutions"]  # the last block of the level only
            dec[f"{r}x{r}_block{i}"] = UNetBlock(cfg, cin, cout, E, attention=attn)
        if level == 0:
            dec[f"{r}x{r}_aux_norm"] = GroupNorm(cfg, cout)
            dec[f"{r}x{r}_aux_conv"] = Conv2d(cout, cfg["out_channels"], 3, init_scale=1e-5)
    return dec


def positional_embedding(c_noise, channels):
    """f_i = (1/10000)^(i/(C/2-1)), i < C/2; [sin(c f), cos(c f)] (sin first, as SongUNet swaps EDM's
    halves). In double, rounded once, like msdiff; the caller rounds c_noise to float32 first, as msdiff does."""
    half = channels // 2
    freqs = (1.0 / 10000) ** (torch.arange(half, dtype=torch.float64, device=c_noise.device) / (half - 1))
    arg = c_noise.double()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


class UNet(nn.Module):
    """Mapping network + encoder, and one decoder (`dec`, EDM's SongUNet) or one per stage (`decs.{s}`,
    the authors' MultistageUNet)."""

    def __init__(self, cfg, widths, multistage):
        super().__init__()
        C = cfg["model_channels"]
        self.map_layer0 = Linear(C, C * cfg["channel_mult_emb"])
        self.map_layer1 = Linear(C * cfg["channel_mult_emb"], C * cfg["channel_mult_emb"])
        self.enc, skips = build_encoder(cfg)
        decoders = [build_decoder(cfg, w, skips) for w in widths]
        if multistage:
            self.decs = nn.ModuleList(decoders)
        else:
            self.dec = decoders[0]

    def forward(self, x, c_noise, stage):
        # x: (N, C, R, R) already scaled by c_in; c_noise: (N)
        emb = positional_embedding(c_noise, self.map_layer0.weight.shape[1]).to(x.dtype)
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))
        skips = []
        for block in self.enc.values():  # every encoder output is a skip
            x = block(x) if isinstance(block, Conv2d) else block(x, emb)
            skips.append(x)
        dec = self.decs[stage] if hasattr(self, "decs") else self.dec
        for name, block in dec.items():
            if name.endswith("aux_norm"):
                h = block(x)
            elif name.endswith("aux_conv"):
                return block(F.silu(h))
            else:  # a block that takes more channels than x has takes concat(x, skip)
                if x.shape[1] != block.cin:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        raise AssertionError("decoder without a head")


class SeparateUNets(nn.Module):
    """`separate`: one whole SongUNet per stage (`nets.{s}.`), nothing shared."""

    def __init__(self, cfg):
        super().__init__()
        self.nets = nn.ModuleList(UNet(cfg, [w], multistage=False) for w in cfg["decoders"])

    def forward(self, x, c_noise, stage):
        return self.nets[stage](x, c_noise, 0)


class Denoiser(nn.Module):
    """D(x; sigma) = c_skip x + c_out F(c_in x; c_noise), the raw network under `model.` (EDMPrecond /
    VPPrecond). Coefficients are computed in double per sample and rounded to float, as common/model/precond.c."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        if cfg["separate"]:
            self.model = SeparateUNets(cfg)
        else:
            self.model = UNet(cfg, cfg["decoders"], multistage=len(cfg["decoders"]) > 1)

    def stage_of(self, sigma):
        """The first stage s with sigma <= boundaries[s], compared in float32 (common/model/config.c)."""
        s = np.float32(sigma)
        for i, b in enumerate(self.cfg["boundaries"]):
            if s <= np.float32(b):
                return i
        return len(self.cfg["decoders"]) - 1

    def coefficients(self, sigma):
        """sigma: (N) float64 host tensor -> c_skip, c_out, c_in, c_noise, weight (each (N), float64)."""
        if self.cfg["precond"] == "vp":
            t = (torch.sqrt(VP_BETA_MIN ** 2 + 2 * VP_BETA_D * torch.log1p(sigma ** 2)) - VP_BETA_MIN) / VP_BETA_D
            return torch.ones_like(sigma), -sigma, 1 / torch.sqrt(sigma ** 2 + 1), (VP_M - 1) * t, 1 / sigma ** 2
        sd = self.cfg["sigma_data"]
        s2 = sigma ** 2 + sd ** 2
        return sd ** 2 / s2, sigma * sd / torch.sqrt(s2), 1 / torch.sqrt(s2), torch.log(sigma) / 4, s2 / (sigma * sd) ** 2

    def forward(self, x, sigma):
        # x: (N, C, R, R) on any device; sigma: (N) float64 on the host, all in one stage
        stages = {self.stage_of(s) for s in sigma.tolist()}
        if len(stages) != 1:
            raise ValueError(f"batch spans stages {sorted(stages)}: a batch must share one decoder")
        c_skip, c_out, c_in, c_noise, _ = (c.to(x.device, x.dtype) for c in self.coefficients(sigma))
        col = lambda c: c[:, None, None, None]  # noqa: E731  (N) -> (N, 1, 1, 1)
        F_x = self.model(col(c_in) * x, c_noise, stages.pop())
        return col(c_skip) * x + col(c_out) * F_x

    def loss(self, y, n, sigma):
        """(1/N) sum_n w(sigma_n) ||D(y_n + sigma_n n_n; sigma_n) - y_n||^2 (summed over pixels)."""
        weight = self.coefficients(sigma)[4].to(y.device, y.dtype)
        D = self(y + sigma.to(y.device, y.dtype)[:, None, None, None] * n, sigma)
        return (weight * ((D - y) ** 2).sum(dim=(1, 2, 3))).mean()


def layers(net):
    return [m for m in net.modules() if isinstance(m, (Conv2d, Linear))]


def edm_init_(net):
    """EDM's init (common/model/model.c), from torch's RNG: weights xavier_uniform (fan_in = in k k, fan_out =
    out k k) times init_scale (1e-5 for conv1, proj, aux_conv; sqrt(0.2) for qkv), biases 0, norms 1/0."""
    with torch.no_grad():
        for m in layers(net):
            w = m.weight
            fan_in, fan_out = w[0].numel(), w.shape[0] * w[0, 0].numel()
            w.uniform_(-1, 1).mul_(math.sqrt(6 / (fan_in + fan_out)) * m.init_scale)
            m.bias.zero_()


def perturb_(net, seed):
    """Working-scale random weights (numpy RNG, fixed seed): xavier_uniform without EDM's 1e-5 and
    sqrt(0.2) factors, biases N(0, 0.1^2), GroupNorm weights 1 + N(0, 0.1^2) and biases N(0, 0.1^2). A fresh
    EDM init zeroes conv1, proj and aux_conv in effect, which would leave most of the network untested."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (Conv2d, Linear)):
                w = m.weight
                bound = math.sqrt(6 / (w[0].numel() + w.shape[0] * w[0, 0].numel()))
                w.copy_(torch.from_numpy(rng.uniform(-bound, bound, w.shape)))
                m.bias.copy_(torch.from_numpy(0.1 * rng.standard_normal(m.bias.shape)))
            elif isinstance(m, GroupNorm):
                m.weight.copy_(torch.from_numpy(1 + 0.1 * rng.standard_normal(m.weight.shape)))
                m.bias.copy_(torch.from_numpy(0.1 * rng.standard_normal(m.bias.shape)))


CONFIG_KEYS = ("img_resolution", "in_channels", "out_channels", "model_channels", "channel_mult", "num_blocks",
               "attn_resolutions", "channel_mult_emb", "dropout", "gn_groups", "gn_min_channels", "decoders",
               "boundaries", "separate", "precond", "sigma_data")  # msdiff's JSON (common/model/config.c)


def load_checkpoint(path):
    """msdiff checkpoint -> (Denoiser with its weights, tensors, metadata). Strict, like msdiff: every
    parameter present with its shape, and nothing under "model." that the network lacks."""
    tensors, meta = st_read(path)
    if "config" not in meta:
        raise ValueError(f"{path}: no \"config\" in __metadata__ (not an msdiff checkpoint?)")
    cfg = json.loads(meta["config"])
    lacking = [k for k in CONFIG_KEYS if k not in cfg]
    if lacking:
        raise ValueError(f"{path}: the config in __metadata__ lacks {', '.join(lacking)} (not msdiff's JSON?)")
    net = Denoiser(cfg)
    state = net.state_dict()
    params = [name for name, _ in net.named_parameters()]
    problems = [f"missing tensor '{k}'" for k in params if k not in tensors]
    problems += [f"unexpected tensor '{k}'" for k in tensors if k.startswith("model.") and k not in state]
    problems += [f"'{k}' has shape {list(tensors[k].shape)}, the network {list(v.shape)}"
                 for k, v in state.items() if k in tensors and tuple(tensors[k].shape) != tuple(v.shape)]
    if problems:
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise ValueError(f"{path}: " + "; ".join(problems[:3]) + more)
    net.load_state_dict({k: torch.from_numpy(tensors[k].copy()) if k in tensors else v
                         for k, v in state.items()})
    return net, tensors, meta

# ---------------------------------------------------------------------------------------------------
# Shared helpers


def stage_ranges(cfg):
    """[(lo, hi)] per stage: stage s covers (lo, hi], the boundaries as float32."""
    b = [0.0] + [float(np.float32(x)) for x in cfg["boundaries"]] + [math.inf]
    return list(zip(b[:-1], b[1:]))


def sigma_inside(lo, hi):
    """A sigma well inside (lo, hi], where D depends strongly on the network (c_out is not small)."""
    if lo == 0:
        return 1.0 if hi == math.inf else hi / 2
    return 2 * lo if hi == math.inf else math.sqrt(lo * hi)


def run_msdiff(msdiff, *args):
    r = subprocess.run([msdiff, *args], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"torch_compare.py: `msdiff {' '.join(args)}` failed ({r.returncode}):\n{r.stderr.strip()}")
    return r.stdout


def preset_config(msdiff, name):
    info = json.loads(run_msdiff(msdiff, "info", "--preset", name, "--json"))
    return info["config"], info["parameters"]["total"]


def setup_torch(args):
    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable before any parallel work; harmless if already set
        pass
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32: no TF32 anywhere
    torch.backends.cudnn.allow_tf32 = False
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("torch_compare.py: --device cuda, but this torch sees no CUDA device")
    dev = f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else ""
    # timings on a shared machine need its load and OpenMP's wait policy to be read (see --help)
    print(f"# torch {torch.__version__}, numpy {np.__version__}, threads {torch.get_num_threads()} "
          f"(interop {torch.get_num_interop_threads()}), device {args.device}{dev}, python {sys.executable}")
    print(f"# {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, "
          f"OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY', 'unset')}")
    return torch.device(args.device)

# ---------------------------------------------------------------------------------------------------
# compare: D from PyTorch and from `msdiff denoise`, one sigma per stage


def cmd_compare(args):
    device = setup_torch(args)
    work = tempfile.mkdtemp(prefix="torch_compare.")
    try:
        return compare(args, device, work)
    finally:
        if args.keep:
            print(f"# kept {work}")
        else:
            shutil.rmtree(work)


def compare(args, device, work):
    ckpt, perturb = args.model, args.perturb
    if ckpt is None:
        ckpt = os.path.join(work, "init.safetensors")
        run_msdiff(args.msdiff, "init", "--preset", args.config, "--seed", str(args.seed), "--out", ckpt)
        perturb = True if perturb is None else perturb
    try:
        net, tensors, meta = load_checkpoint(ckpt)
    except (OSError, ValueError, struct.error) as e:
        sys.exit(f"torch_compare.py: cannot load checkpoint: {e}")
    cfg = dict(net.cfg)
    if perturb or (args.precond and args.precond != cfg["precond"]):
        # write a derived checkpoint in msdiff's format: same names and order, F32, same metadata
        if perturb:
            perturb_(net, args.seed)
            meta["torch_compare"] = f"weights randomised by bench/torch_compare.py, seed {args.seed}"
        if args.precond:
            cfg["precond"] = net.cfg["precond"] = args.precond
            meta["config"] = json.dumps(cfg, separators=(",", ":"))
        state = net.state_dict()
        out = {k: (state[k].numpy() if k in state else v) for k, v in tensors.items()}
        ckpt = os.path.join(work, "model.safetensors")
        st_write(ckpt, out, meta)
    net = net.to(device).eval()
    sigmas = args.sigmas or [sigma_inside(lo, hi) for lo, hi in stage_ranges(cfg)]
    print(f"# checkpoint {args.model or args.config + ' (msdiff init)'}{', perturbed' if perturb else ''}; "
          f"{'separate' if cfg['separate'] else 'multistage' if len(cfg['decoders']) > 1 else 'unified'}, "
          f"{len(cfg['decoders'])} stage(s), precond {cfg['precond']}, batch {args.batch}, seed {args.seed}")
    worst = 0.0
    for i, sigma in enumerate(sigmas):
        stage = net.stage_of(sigma)
        lo, hi = stage_ranges(cfg)[stage]
        rng = np.random.default_rng([args.seed, i])
        shape = (args.batch, cfg["in_channels"], cfg["img_resolution"], cfg["img_resolution"])
        x = (rng.uniform(-1, 1, shape) + sigma * rng.standard_normal(shape)).astype(np.float32)
        xpath, dpath = os.path.join(work, f"x{i}.safetensors"), os.path.join(work, f"D{i}.safetensors")
        st_write(xpath, {"x": x})
        cmd = ["denoise", "--model", ckpt, "--input", xpath, "--sigma", repr(float(sigma)), "--out", dpath]
        said = run_msdiff(args.msdiff, *(cmd + (["--backend", args.backend] if args.backend else [])))
        m = re.search(r"\(stage (\d+) of \d+\).*backend (\w+)", said)
        if not m or int(m.group(1)) != stage:
            sys.exit(f"torch_compare.py: msdiff routed sigma {sigma} elsewhere: {said.strip()}")
        D_msdiff = st_read(dpath)[0]["D"]
        with torch.no_grad():
            sig = torch.full((args.batch,), float(sigma), dtype=torch.float64)
            D_torch = net(torch.from_numpy(x).to(device), sig).cpu().numpy()
        diff = np.abs(D_torch.astype(np.float64) - D_msdiff)
        rel = diff.max() / np.abs(D_msdiff).max()
        worst = max(worst, rel) if np.isfinite(rel) else math.inf
        where = f"({lo:g}, {hi:g}]"
        print(f"stage {stage}  sigma {where:<18} at {sigma:<9.6g} backend {m.group(2):<5} "
              f"max rel diff {rel:.3e}  max abs diff {diff.max():.3e}  {'ok' if rel <= args.tol else 'FAIL'}")
    print(f"# worst {worst:.3e}, bound {args.tol:g}: {'pass' if worst <= args.tol else 'FAIL'}")
    return 0 if worst <= args.tol else 1

# ---------------------------------------------------------------------------------------------------
# bench: one training step and one sampling forward, timed


def draw_sigmas(cfg, B, rng, stage=None):
    """The batch's sigmas by EDM's (lognormal) stage policy, as common/model/train.c: the stage of the first
    draw (or `stage`), then every sample from the loss's law restricted to it, by rejection."""
    def draw(n):
        if cfg["precond"] == "vp":  # t ~ U(eps_t, 1)
            t = 1 + rng.uniform(size=n) * (VP_EPS_T - 1)
            return np.sqrt(np.exp(0.5 * VP_BETA_D * t ** 2 + VP_BETA_MIN * t) - 1)
        return np.exp(P_MEAN + P_STD * rng.standard_normal(n))
    lo, hi = None, None
    out = []
    while len(out) < B:
        for s in draw(B):
            s32 = np.float32(s)
            if lo is None:
                if stage is None:
                    stage = next((i for i, b in enumerate(cfg["boundaries"]) if s32 <= np.float32(b)),
                                 len(cfg["decoders"]) - 1)
                lo, hi = stage_ranges(cfg)[stage]
            if lo < s32 <= hi and len(out) < B:
                out.append(s)
    return stage, np.array(out)


def timed(fn, warmup, reps, device):
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), min(times), max(times)


def cmd_bench(args):
    device = setup_torch(args)
    cfg, msdiff_params = preset_config(args.msdiff, args.config)
    if args.stage is not None and not 0 <= args.stage < len(cfg["decoders"]):
        sys.exit(f"torch_compare.py: --stage {args.stage}, but {args.config} has stages 0..{len(cfg['decoders']) - 1}")
    torch.manual_seed(args.seed)
    net = Denoiser(cfg)
    edm_init_(net)
    net = net.to(device)
    params = list(net.parameters())
    n_params = sum(p.numel() for p in params)
    if n_params != msdiff_params:
        sys.exit(f"torch_compare.py: {n_params} parameters here, msdiff info says {msdiff_params}")
    B, C, R = args.batch, cfg["in_channels"], cfg["img_resolution"]
    print(f"# config {args.config}: {len(cfg['decoders'])} stage(s), {n_params:,} parameters (as msdiff info), "
          f"dropout {cfg['dropout']:g}, batch {B}, warm-up {args.warmup}, median of {args.reps}")
    rng = np.random.default_rng(args.seed)
    results = []

    # (1) training step: EDM loss, backward, nan_to_num and the gradient norm, Adam, EMA (common/model/train.c)
    opt = torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    ema = [p.detach().clone() for p in params]
    y = torch.rand(B, C, R, R, device=device) * 2 - 1  # stands in for a batch of images in [-1, 1]
    images, stages = [0.0], []

    def train_step():
        stage, sigma = draw_sigmas(cfg, B, rng, args.stage)
        stages.append(stage)
        net.train()
        opt.zero_grad(set_to_none=True)  # decoders of other stages get no gradient, so Adam skips them
        loss = net.loss(y, torch.randn_like(y), torch.from_numpy(sigma))
        loss.backward()
        grads = [p.grad for p in params if p.grad is not None]
        for g in grads:
            torch.nan_to_num_(g, nan=0.0, posinf=1e5, neginf=-1e5)
        torch.sqrt(sum(g.pow(2).sum() for g in grads))  # the gradient norm msdiff logs
        opt.step()
        # EDM's EMA: half-life 500k images, ramped to 0.05 * images seen
        beta = 0.5 ** (B / max(min(500e3, 0.05 * images[0]), 1e-8))
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.copy_(p.detach().lerp(e, beta))
        images[0] += B

    if args.only in (None, "train"):
        t = timed(train_step, args.warmup, args.reps, device)
        seen = ",".join(map(str, stages[args.warmup:])) if len(cfg["decoders"]) > 1 else ""
        results.append(("train", t, f"stages {seen}" if seen else ""))

    # (2) sampling forward: D(x; sigma) without gradients, one sigma per stage
    net.eval()
    for s in ([args.stage] if args.stage is not None else range(len(cfg["decoders"]))) if args.only != "train" else []:
        sigma = sigma_inside(*stage_ranges(cfg)[s])
        x = torch.randn(B, C, R, R, device=device) * math.sqrt(sigma ** 2 + 0.25)
        sig = torch.full((B,), sigma, dtype=torch.float64)

        def forward():
            with torch.no_grad():
                net(x, sig)
        what = "sample" if len(cfg["decoders"]) == 1 else f"sample-stage{s}"
        results.append((what, timed(forward, args.warmup, args.reps, device), f"sigma {sigma:g}"))

    if args.csv:
        print("what,config,batch,threads,device,seconds,images_per_s")
    for what, (med, lo, hi), note in results:
        if args.csv:
            print(f"{what},{args.config},{B},{args.threads},{args.device},{med:.6f},{B / med:.2f}")
        else:
            print(f"{what:<14} {med:8.4f} s/step  (min {lo:.4f}, max {hi:.4f})  {B / med:9.1f} images/s  {note}")
    return 0

# ---------------------------------------------------------------------------------------------------
# selftest: this file's network against the reference dumps of EDM's own classes (tests/data)


def cmd_selftest(args):
    device = setup_torch(args)
    worst = 0.0
    for name in ("edm-tiny-unified", "edm-tiny-ms"):
        path = os.path.join(REPO, "tests", "data", name + ".safetensors")
        tensors, meta = st_read(path)
        ref = json.loads(meta["config"])  # the dump's own keys; groups min(16, C/4), eps 1e-6
        cfg = {k: ref[k] for k in ("img_resolution", "in_channels", "model_channels", "channel_mult",
                                   "num_blocks", "attn_resolutions", "channel_mult_emb", "decoders",
                                   "boundaries", "sigma_data", "dropout")}
        cfg.update(out_channels=ref["in_channels"], gn_groups=16, gn_min_channels=4, separate=False,
                   precond="edm")
        for dtype in (torch.float64, torch.float32):
            net = Denoiser(cfg)
            net.load_state_dict({k: torch.from_numpy(tensors[k].copy()) if k in tensors else v
                                 for k, v in net.state_dict().items()})
            net = net.to(device, dtype).eval()
            y, n = (torch.from_numpy(tensors[k]).to(device, dtype) for k in ("y", "n"))
            for s, sigma in enumerate(json.loads(meta["sigmas"])):
                sig = torch.full((y.shape[0],), sigma, dtype=torch.float64)
                with torch.no_grad():
                    D = net(y + sigma * n, sig).cpu().double().numpy()
                    loss = float(net.loss(y, n, sig))
                want = tensors[f"case{s}.D"].astype(np.float64)
                rel = np.abs(D - want).max() / np.abs(want).max()
                rel_loss = abs(loss - float(tensors[f"case{s}.loss"])) / abs(float(tensors[f"case{s}.loss"]))
                worst = max(worst, rel, rel_loss)
                print(f"{name:<17} {str(dtype)[6:]:<8} sigma {sigma:<4g} stage {net.stage_of(sigma)}  "
                      f"D max rel diff {rel:.3e}  loss rel diff {rel_loss:.3e}")
    print(f"# worst {worst:.3e}, bound {args.tol:g}: {'pass' if worst <= args.tol else 'FAIL'}")
    return 0 if worst <= args.tol else 1

# ---------------------------------------------------------------------------------------------------
# Command line

EPILOG = """\
Run with Debian's interpreter, which has python3-torch (1.13) and numpy: /usr/bin/python3.
Timing notes: Debian's torch does its matmuls (linear, attention) with netlib's reference BLAS and its
convolutions with oneDNN. On a machine whose cores are busy with other work, libgomp's default wait
policy makes --threads 2 several times slower than --threads 1; OMP_WAIT_POLICY=PASSIVE avoids that
(set it for msdiff too when comparing). The header prints the load average and the policy.

examples:
  /usr/bin/python3 bench/torch_compare.py compare                     # mini-ms, fresh + perturbed
  /usr/bin/python3 bench/torch_compare.py compare --backend ref --config tiny-ms
  /usr/bin/python3 bench/torch_compare.py compare --config mini --precond vp
  /usr/bin/python3 bench/torch_compare.py compare --model runs/mini-ms/ema.safetensors
  /usr/bin/python3 bench/torch_compare.py bench --config mini --batch 64 --threads 2
  /usr/bin/python3 bench/torch_compare.py bench --config mini-ms --device cuda --csv
  /usr/bin/python3 bench/torch_compare.py selftest
"""


def natural(text):
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got '{text}'")
    return int(text)


def positive(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return int(text)


def sigma_list(text):
    try:
        sigmas = [float(v) for v in text.split(",")]
    except ValueError:
        sigmas = []
    if not sigmas or not all(0 < s < math.inf for s in sigmas):
        raise argparse.ArgumentTypeError(f"expected comma-separated finite sigmas > 0, got '{text}'")
    return sigmas


def main():
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--threads", type=positive, default=2, help="torch intra-op threads (default 2; inter-op 1)")
    common.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="where PyTorch computes, in float32 with TF32 off (default cpu)")
    common.add_argument("--seed", type=natural, default=0, help="seed of inits, perturbation and inputs (default 0)")
    common.add_argument("--msdiff", default=os.path.join(REPO, "msdiff"),
                        help="the msdiff program (default: REPO/msdiff; build it with make -j2)")
    p = argparse.ArgumentParser(
        description="msdiff's U-Net (docs/METHOD.md, Architecture) in PyTorch: compare msdiff's denoiser with it, "
                    "time PyTorch's training step and sampling forward, or check it against EDM's "
                    "reference dumps in tests/data.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("compare", parents=[common], epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="D(x; sigma) from PyTorch and from `msdiff denoise`, one sigma per stage",
                       description="For every stage, draw a fixed-seed x (N, C, R, R), pick a sigma inside the "
                       "stage, run `msdiff denoise` and this file's network, and print max|D_torch - D_msdiff| "
                       "/ max|D_msdiff|. Exit status 1 if any exceeds --tol.")
    c.add_argument("--model", help="an msdiff checkpoint (default: `msdiff init --preset CONFIG` in a temp folder)")
    c.add_argument("--config", "--preset", default="mini-ms", help="preset for the fresh checkpoint (default mini-ms)")
    c.add_argument("--perturb", action=argparse.BooleanOptionalAction, default=None,
                   help="randomise all weights at working scale first (default: on for a fresh checkpoint, "
                        "off for --model) and hand msdiff that checkpoint")
    c.add_argument("--precond", choices=["edm", "vp"], help="rewrite the config's preconditioning (derived checkpoint)")
    c.add_argument("--backend", help="msdiff's backend: ref, fast or cuda (default: msdiff's fastest)")
    c.add_argument("--batch", type=positive, default=4, help="images per sigma (default 4)")
    c.add_argument("--sigmas", type=sigma_list,
                   help="comma-separated sigmas to compare at (default: one inside each stage)")
    c.add_argument("--tol", type=float, default=1e-4, help="bound on the max relative difference (default 1e-4)")
    c.add_argument("--keep", action="store_true", help="keep the temporary folder (checkpoint, x, D files)")
    c.set_defaults(func=cmd_compare)

    b = sub.add_parser("bench", parents=[common], epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="time one training step and one sampling forward in PyTorch",
                       description="Time (1) one training step as common/model/train.c does it: lognormal sigmas "
                       "(EDM's stage policy), EDM loss, backward, nan_to_num, gradient norm, Adam (lr 1e-3 "
                       "without msdiff's ramp, betas 0.9/0.999, eps 1e-8), EMA; dropout as the config says; "
                       "(2) D(x; sigma) under torch.no_grad(), per stage. Warm-up, then the median of --reps.")
    b.add_argument("--config", "--preset", default="mini", help="an msdiff preset (default mini)")
    b.add_argument("--batch", type=positive, default=64, help="batch size (default 64)")
    b.add_argument("--reps", type=positive, default=5, help="timed repetitions (default 5)")
    b.add_argument("--warmup", type=natural, default=2, help="untimed repetitions first (default 2)")
    b.add_argument("--stage", type=natural, help="train and sample this stage only (default: lognormal policy, every stage)")
    b.add_argument("--only", choices=["train", "sample"], help="time only the training step or only sampling")
    b.add_argument("--csv", action="store_true",
                   help="print CSV lines: what,config,batch,threads,device,seconds,images_per_s")
    b.set_defaults(func=cmd_bench)

    t = sub.add_parser("selftest", parents=[common], help="this network against tests/data's EDM reference dumps",
                       description="Load tests/data/edm-tiny-{unified,ms}.safetensors (EDM's SongUNet and the "
                       "authors' MultistageUNet, float64) and compare D and the loss, in float64 and float32.")
    t.add_argument("--tol", type=float, default=1e-4, help="bound on the max relative difference (default 1e-4)")
    t.set_defaults(func=cmd_selftest)

    args = p.parse_args()
    if IMPORT_ERROR is not None:
        sys.exit(f"torch_compare.py: {IMPORT_ERROR} under {sys.executable}; run it with Debian's "
                 f"interpreter: /usr/bin/python3 {' '.join(sys.argv)}")
    if args.command != "selftest" and not os.access(args.msdiff, os.X_OK):
        sys.exit(f"torch_compare.py: no msdiff program at {args.msdiff} (build it: make -j2 in {REPO})")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
