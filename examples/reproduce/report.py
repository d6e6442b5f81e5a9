"""Aggregate the cached cells into docs/results.md (claims C1-C5 beside the paper's numbers, verdicts,
learning curves) and docs/images/results_*.png; and the pilot's curves into docs/images/reproduce_pilot.png.

Statistics: mean and sample standard deviation over seeds. Verdict rule for a claim "A > B":
d = mean(A) - mean(B), se = sqrt(sd(A)^2 / n_A + sd(B)^2 / n_B) (the standard error of the
difference, Welch). *holds* if d > 2 se, *does not hold* if d < -2 se, *within noise* otherwise;
with one seed there is no spread to judge by and the verdict is *undetermined (1 seed)*. A claim
"A >= B" (Top2 >= Top1) holds unless the rule says "does not hold".
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np

from reproduce.cells import (
    DISPLAY,
    FAMILIES,
    INTER_B,
    INTER_BSTAR,
    LABEL_FORMS,
    MODES,
    MULTI,
    REPLACE,
    ft_id,
    kp_id,
    label_id,
    pretrain_id,
)
from reproduce.runner import load_result

# -- the paper's numbers (IoU, mIoU) ---------------------------------------------------------------------
PAPER_TABLE1 = {  # OpenScene, 8000 pre-training scenes, 500 fine-tuning scenes
    ("bevformer", "replace"): (39.03, 12.77), ("bevformer", "multi"): (38.91, 11.75),
    ("sparse-bevformer", "bstar"): (40.09, 15.12), ("sparse-bevformer", "b"): (41.03, 15.25),
    ("ls", "replace"): (43.08, 18.35), ("ls", "multi"): (43.12, 16.00),
    ("sparse-ls", "bstar"): (43.06, 18.82), ("sparse-ls", "b"): (43.92, 19.20),
}
PAPER_TABLE4 = {"online": (43.92, 19.20), "offboard": (73.89, 33.17)}  # OpenScene, Sparse-LS
PAPER_TABLE5 = {  # OpenScene, LS; row -> (paper's row, (IoU, mIoU))
    "k-gt": ("500 GT", (37.70, 15.45)), "kp-gt": ("2000 GT", (41.12, 18.76)),
    "top1": ("500 GT + 1500 Top1", (37.62, 17.10)), "top2": ("500 GT + 1500 Top2", (44.62, 17.40)),
}
PAPER_GT_BINARY = (39.9, 54.8)  # Occ3D mIoU: predicted binary -> GT binary (introduction)
FORM_TEXT = {"paper": "the paper's form (free among the candidates)",
             "given": "kept to the build-binary geometry (`--form given-geometry`)"}


# -- statistics -------------------------------------------------------------------------------------------
class Stat:
    def __init__(self, values: list[float]):
        self.values = [float(v) for v in values if v is not None and not math.isnan(float(v))]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else float("nan")

    @property
    def std(self) -> float:
        return float(np.std(self.values, ddof=1)) if self.n > 1 else float("nan")

    def __str__(self) -> str:
        if not self.n:
            return "n/a"
        if self.n == 1:
            return f"{self.mean:.2f}"
        return f"{self.mean:.2f} ± {self.std:.2f}"


def verdict(a: Stat, b: Stat) -> tuple[str, str]:
    """Claim "a > b": (verdict, detail) by the rule of the module docstring."""
    if not a.n or not b.n:
        return "not run", ""
    d = a.mean - b.mean
    if a.n < 2 or b.n < 2:
        return "undetermined (1 seed)", f"d = {d:+.2f}"
    se = math.sqrt(a.std ** 2 / a.n + b.std ** 2 / b.n)
    detail = f"d = {d:+.2f}, 2·se = {2 * se:.2f}"
    if d > 2 * se and d > 0:
        return "holds", detail
    if d < -2 * se and d < 0:
        return "does not hold", detail
    return "within noise", detail


def plateau_step(curve: list[dict], key: str = "miou", tolerance: float = 1.0) -> int | None:
    """The first validation step from which ``key`` stays within ``tolerance`` points of its best value.

    The pilot's rule for "trained until the validation curve flattens" (docs/reproduce.md).
    """
    points = [(r["step"], r[key]) for r in curve if r.get(key) is not None]
    if not points:
        return None
    best = max(v for _, v in points)
    for k, (step, _) in enumerate(points):
        if all(v >= best - tolerance for _, v in points[k:]):
            return step
    return points[-1][0]


# -- collecting -------------------------------------------------------------------------------------------
class Results:
    def __init__(self, cells, work: Path):
        self.by_id = {c.id: c for c in cells}
        self.work = work
        self.seeds = sorted({c.seed for c in cells})

    def result(self, cell_id: str) -> dict | None:
        cell = self.by_id.get(cell_id)
        if cell is None:
            return None
        return load_result(self.work, cell.alias_of or cell.id)

    def stat(self, id_of_seed, *path: str, scale: float = 1.0) -> Stat:
        values = []
        for seed in self.seeds:
            r = self.result(id_of_seed(seed))
            for key in path:
                r = None if r is None else r.get(key)
            if r is not None:
                values.append(scale * r)
        return Stat(values)

    def curves(self, id_of_seed, key: str = "miou") -> list[tuple[list[int], list[float]]]:
        out = []
        for seed in self.seeds:
            r = self.result(id_of_seed(seed)) or {}
            points = [(c["step"], c[key]) for c in r.get("curve", []) if c.get(key) is not None]
            if points:
                out.append(([s for s, _ in points], [v for _, v in points]))
        return out


# -- rendering --------------------------------------------------------------------------------------------
def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(temp, dpi=110, bbox_inches="tight")
    temp.replace(path)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(text)
    temp.replace(path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


class Report:
    """The claims of one scale, read from the cached cells: one method per section of results.md."""

    def __init__(self, cells, scale, work: Path, images: Path, *, draw: bool = True):
        self.R, self.scale, self.work, self.images, self.draw = Results(cells, work), scale, work, images, draw
        self.N, self.K, self.P = scale.binary_scenes, scale.semantic_scenes, scale.pseudo_scenes
        self.sizes = scale.pretrain_sizes
        self.kinds = ["ls"] + (["bevformer"] if scale.dense_pair else [])
        self.claims: list[dict] = []  # every claim as data: the table, and what the run logs as verdicts come
        self.why: list[str] = []
        self.written: list[Path] = []
        self.plt = _pyplot()

    # -- helpers --------------------------------------------------------------------------------------
    def ft(self, variant, strategy, n, key="miou", where="val") -> Stat:
        return self.R.stat(lambda s: ft_id(variant, strategy, n, s), where, key)

    def claim(self, name: str, text: str, paper: str, a: Stat, b: Stat, ids: tuple = (), at_least: bool = False):
        v, detail = verdict(a, b)
        if at_least and v == "within noise":
            v = "holds (≥, within noise)"
        self.claims.append({"claim": name, "test": text, "paper": paper, "verdict": v, "detail": detail,
                            "a": str(a), "b": str(b), "complete": a.n == b.n == len(self.R.seeds)})
        if v in ("does not hold", "within noise") and ids:
            self.why.append(f"- **{name}, {text}: {v}.** " + "; ".join(self._diagnose(label, f) for label, f in ids))

    def _diagnose(self, label: str, id_of_seed) -> str:
        """What one side's learning curves say: final vs best validation mIoU, and its fit of its own frames."""
        final = self.R.stat(id_of_seed, "val", "miou")
        fit = self.R.stat(id_of_seed, "train_fit", "miou")
        best, at = [], []
        for steps, values in self.R.curves(id_of_seed):
            k = int(np.argmax(values))
            best.append(values[k])
            at.append(steps[k])
        peak = f", best on its curve {np.mean(best):.2f} at step ~{np.mean(at):.0f}" if best else ""
        return f"{label}: validation {final}{peak}, own training frames {fit}"

    def _figure(self, name: str, fig) -> str:
        path = self.images / name
        if not self.draw:
            self.plt.close(fig)
            return ""
        _save(fig, path)
        self.plt.close(fig)
        self.written.append(path)
        return f"![{name}](images/{name})\n"

    # -- sections -------------------------------------------------------------------------------------
    def curves(self) -> list[str]:
        """The learning curves of every fine-tuning group (mean over seeds) and of pre-training."""
        groups = self._curve_groups()
        fig, axes = self.plt.subplots(1, 2, figsize=(14, 4.6))
        rows = []
        colours = self.plt.get_cmap("tab20")  # 13 groups: the default cycle of 10 would repeat colours
        for k, (label, ident) in enumerate(groups):
            curves = self.R.curves(ident)
            if not curves:
                continue
            n = min(len(c[0]) for c in curves)
            steps, mean = curves[0][0][:n], np.mean([c[1][:n] for c in curves], axis=0)
            axes[0].plot(steps, mean, marker=".", label=label, color=colours(k % 20))
            plateau = [plateau_step([{"step": s, "miou": v} for s, v in zip(*c)]) for c in curves]
            last = [c[1][-1] for c in curves]
            # the point nearest three quarters of the run
            earlier = [c[1][int(np.argmin(np.abs(np.asarray(c[0]) - 0.75 * c[0][-1])))] for c in curves]
            rows.append([label, f"{np.mean(last):.2f}", f"{np.mean(last) - np.mean(earlier):+.2f}",
                         ", ".join(str(p) for p in plateau)])
        for n in [s for s in self.sizes if s]:
            for steps, values in self.R.curves(lambda s, n=n: pretrain_id("sparse-ls", n, s), "binary_iou")[:1]:
                axes[1].plot(steps, values, marker=".",
                             label=f"Sparse-LS pre-training, {n} scenes (seed {self.R.seeds[0]})")
        axes[0].set(xlabel="fine-tuning step", ylabel="validation mIoU (%)", title="fine-tuning (mean over seeds)")
        axes[1].set(xlabel="pre-training step", ylabel="validation binary IoU (%)", title="pre-training")
        for ax in axes:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        out = ["## Learning curves\n",
               f"Validation during training, about every {self.scale.val_every_steps} steps (at epoch ends), on the "
               "validation scenes (the training loop's validation; the tables below score the final checkpoints with "
               "`b2s_core.apps.evaluate`). \"last quarter\" is the change over the last quarter of the run; "
               "\"flat from\" is, per seed, the first step after which the curve "
               "stays within 1 mIoU point of its best (the pilot's rule, docs/reproduce.md).\n",
               _table(["cells", "last point, val mIoU", "last quarter", "flat from step (per seed)"], rows) + "\n",
               self._figure("results_curves.png", fig)]
        return out

    def _curve_groups(self):
        N = self.N
        groups = [(f"Sparse-LS S+B, {n} pre-training scenes" if n else "Sparse-LS, from scratch",
                   lambda s, n=n: ft_id("sparse-ls", INTER_B if n else INTER_BSTAR, n, s)) for n in self.sizes]
        groups += [(f"Sparse-LS S+B*, {N}", lambda s: ft_id("sparse-ls", INTER_BSTAR, N, s)),
                   (f"LS Replacing Head, {N}", lambda s: ft_id("ls", REPLACE, N, s)),
                   (f"LS Multi-Head, {N}", lambda s: ft_id("ls", MULTI, N, s)),
                   ("offboard Sparse-LS", lambda s: f"offboard-s{s}"),
                   ("LS, K GT", lambda s: ft_id("ls", REPLACE, 0, s)),
                   ("LS, K+P GT", lambda s: kp_id("gt", s))]
        groups += [(f"LS, K GT + P {m.capitalize()} ({f})", lambda s, m=m, f=f: kp_id(f"{m}-{f}", s))
                   for f in LABEL_FORMS for m in MODES]
        return groups

    def c1(self) -> list[str]:
        N, sizes = self.N, self.sizes
        sparse = {n: self.ft("sparse-ls", INTER_B if n else INTER_BSTAR, n) for n in sizes}
        binary = {n: self.ft("sparse-ls", INTER_B if n else INTER_BSTAR, n, "binary_iou") for n in sizes}
        geometry = {n: self.ft("sparse-ls", INTER_B if n else INTER_BSTAR, n, "geometry_iou") for n in sizes}
        ls = {n: self.ft("ls", REPLACE, n) for n in (0, N)}
        rows = [["Sparse-LS Intermediate Head S+B (S+B* at 0), mIoU"] + [str(sparse[n]) for n in sizes],
                ["the same, geometry IoU"] + [str(geometry[n]) for n in sizes],
                ["the same, binary-decoder IoU"] + [str(binary[n]) for n in sizes],
                ["LS Replacing Head, mIoU"] + [str(ls[n]) if n in ls else "-" for n in sizes]]
        fig, ax = self.plt.subplots(figsize=(7, 4.2))
        for label, series in (("Sparse-LS S+B", sparse), ("LS Replacing Head", ls)):
            xs = sorted(series)
            ax.errorbar(xs, [series[n].mean for n in xs], yerr=[0 if math.isnan(series[n].std) else series[n].std
                                                                  for n in xs], marker="o", capsize=3, label=label)
        ax.set(xlabel="binary pre-training scenes", ylabel="validation mIoU (%)",
               title=f"C1: fine-tuned mIoU vs pre-training scenes ({self.scale.name}, K = {self.K})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        n4 = sizes[1] if len(sizes) > 2 else None
        ident = {n: (f"S+B, {n} scenes" if n else "from scratch",
                     lambda s, n=n: ft_id("sparse-ls", INTER_B if n else INTER_BSTAR, n, s)) for n in sizes}
        self.claim("C1", f"pre-training on N = {N} binary scenes beats training from scratch (Sparse-LS, mIoU)",
                   "Fig. 5: mIoU rises with scenes", sparse[N], sparse[0], (ident[N], ident[0]))
        if n4:
            self.claim("C1", f"more scenes help more: N = {N} beats N/4 = {n4} (Sparse-LS S+B, mIoU)",
                       "Fig. 5: not saturated at 8000", sparse[N], sparse[n4], (ident[N], ident[n4]))
            self.claim("C1", f"N/4 = {n4} scenes beat none (Sparse-LS, mIoU)", "Fig. 5", sparse[n4], sparse[0],
                       (ident[n4], ident[0]))
        self.claim("C1", f"pre-training on N = {N} beats training from scratch (LS Replacing Head, mIoU)",
                   "Fig. 5(b)", ls[N], ls[0], ((f"LS, {N}", lambda s: ft_id("ls", REPLACE, N, s)),
                                               ("LS, 0", lambda s: ft_id("ls", REPLACE, 0, s))))
        self.claim("C1", f"the binary decoder improves with pre-training (Sparse-LS, binary IoU, {N} vs 0)",
                   "App. C, Fig. 8", binary[N], binary[0])
        return ["## C1: binary pre-training, and more of it (paper Fig. 5)\n",
                f"Fine-tuned on K = {self.K} labelled scenes after pre-training on 0 (from scratch) to N = {N} binary "
                "scenes; validation scores. Paper: OpenScene, up to 8000 pre-training and 500 fine-tuning scenes.\n",
                _table(["Model, score"] + [f"{n} scenes" for n in sizes], rows) + "\n",
                self._figure("results_c1_pretraining.png", fig)]

    def c2(self) -> list[str]:
        N = self.N
        rows, bars = [], []
        stats = {}
        for kind in self.kinds:
            for variant, strategy in FAMILIES[kind]:
                miou, iou = self.ft(variant, strategy, N), self.ft(variant, strategy, N, "geometry_iou")
                stats[(variant, strategy.key)] = miou
                paper = PAPER_TABLE1[(variant, strategy.key)]
                rows.append([DISPLAY[variant], strategy.label, strategy.data_label, str(iou), str(miou),
                             f"{paper[0]:.2f}", f"{paper[1]:.2f}"])
                bars.append((f"{DISPLAY[variant]}\n{strategy.label}\n{strategy.data_label}", miou, paper[1]))
        fig, ax = self.plt.subplots(figsize=(8, 4.2))
        x = np.arange(len(bars))
        ax.bar(x - 0.2, [b[1].mean for b in bars], 0.4, yerr=[0 if math.isnan(b[1].std) else b[1].std for b in bars],
               capsize=3, label=f"ours ({self.scale.name}, N = {N})")
        ax.bar(x + 0.2, [b[2] for b in bars], 0.4, label="paper (OpenScene)")
        ax.set_xticks(x, [b[0] for b in bars], fontsize=7)
        ax.set(ylabel="mIoU (%)", title="C2: fine-tuning strategies (Table 1)")
        ax.legend(fontsize=8)
        for kind in self.kinds:
            sparse, dense = ("sparse-ls", "ls") if kind == "ls" else ("sparse-bevformer", "bevformer")
            name, dname = DISPLAY[sparse], DISPLAY[dense]

            def side(variant, strategy):
                return (f"{DISPLAY[variant]} {strategy.label} {strategy.data_label}",
                        lambda s: ft_id(variant, strategy, N, s))

            b = side(sparse, INTER_B)
            self.claim("C2", f"{name} S+B beats S+B*", "Table 1: 19.20 vs 18.82", stats[(sparse, "b")],
                       stats[(sparse, "bstar")], (b, side(sparse, INTER_BSTAR)))
            self.claim("C2", f"{name} S+B beats {dname} Replacing Head", "Table 1: 19.20 vs 18.35",
                       stats[(sparse, "b")], stats[(dense, "replace")], (b, side(dense, REPLACE)))
            self.claim("C2", f"{name} S+B beats {dname} Multi-Head", "Table 1: 19.20 vs 16.00", stats[(sparse, "b")],
                       stats[(dense, "multi")], (b, side(dense, MULTI)))
            self.claim("C2", f"{dname} Replacing Head beats Multi-Head", "Table 1: 18.35 vs 16.00",
                       stats[(dense, "replace")], stats[(dense, "multi")], (side(dense, REPLACE), side(dense, MULTI)))
        return ["## C2: fine-tuning strategies (paper Table 1)\n",
                f"Pre-trained on all N = {N} binary scenes, fine-tuned on K = {self.K} labelled scenes with each "
                "strategy; validation scores. Paper: OpenScene, 8000 pre-training and 500 fine-tuning scenes.\n",
                _table(["Method", "Fine-tuning strategy", "Fine-tuning data", "IoU (ours)", "mIoU (ours)",
                        "IoU (paper)", "mIoU (paper)"], rows) + "\n",
                self._figure("results_c2_strategies.png", fig)]

    def c3(self) -> list[str]:
        N = self.N
        online = lambda s: ft_id("sparse-ls", INTER_B, N, s)  # noqa: E731
        offboard = lambda s: f"offboard-s{s}"  # noqa: E731
        on, on_iou = self.R.stat(online, "val", "miou"), self.R.stat(online, "val", "geometry_iou")
        off, off_iou = self.R.stat(offboard, "val", "miou"), self.R.stat(offboard, "val", "geometry_iou")
        seg = self.R.stat(offboard, "val_gt_segment", "miou")
        seg_iou = self.R.stat(offboard, "val_gt_segment", "geometry_iou")
        rows = [["Sparse-LS (online)", f"pre-trained on N = {N}, fine-tuned on K", "", str(on_iou), str(on),
                 f"{PAPER_TABLE4['online'][0]:.2f}", f"{PAPER_TABLE4['online'][1]:.2f}"],
                ["Sparse-LS (offboard)", "K only", "✓", str(off_iou), str(off), f"{PAPER_TABLE4['offboard'][0]:.2f}",
                 f"{PAPER_TABLE4['offboard'][1]:.2f}"],
                ["Sparse-LS (offboard), output kept to the GT-occupied voxels", "K only", "✓", str(seg_iou), str(seg),
                 "-", "-"]]
        sides = (("offboard", offboard), ("online", online))
        self.claim("C3", "offboard ≥ 1.5x online (mIoU; B = 1.5 x online)", "Table 4: 33.17 = 1.73 x 19.20", off,
                   self.R.stat(online, "val", "miou", scale=1.5), sides)
        self.claim("C3", "offboard beats online (mIoU)", "Table 4: 33.17 vs 19.20", off, on, sides)
        self.claim("C3", "offboard beats online (geometry IoU)", "Table 4: 73.89 vs 43.92", off_iou, on_iou, sides)
        return ["## C3: the offboard model, GT binary as input (paper Tables 2 and 4)\n",
                "The offboard model takes the GT binary as its sparse queries and, as in the paper (IoU 73.89, not "
                "100), its semantic head still predicts free / occupied; the last row keeps its output to the "
                "GT-occupied voxels (best non-free class there), whose IoU is 100 by construction.\n",
                _table(["Method", "Training data", "Offboard", "IoU (ours)", "mIoU (ours)", "IoU (paper)",
                        "mIoU (paper)"], rows) + "\n"]

    def c4(self) -> list[str]:
        K, P = self.K, self.P
        base = ("K GT", lambda s: ft_id("ls", REPLACE, 0, s))
        kgt = self.R.stat(base[1], "val", "miou")
        ref = ("K+P GT", lambda s: kp_id("gt", s))
        rows = [[f"LS, {K} GT", str(self.R.stat(base[1], "val", "geometry_iou")), str(kgt), *self._paper5("k-gt")],
                [f"LS, {K + P} GT ({K} + {P})", str(self.R.stat(ref[1], "val", "geometry_iou")),
                 str(self.R.stat(ref[1], "val", "miou")), *self._paper5("kp-gt")]]
        quality, bars = [], [("K GT", kgt), ("K+P GT", self.R.stat(ref[1], "val", "miou"))]
        for form in LABEL_FORMS:
            by_mode = {}
            for mode in MODES:
                ident = lambda s, m=mode, f=form: kp_id(f"{m}-{f}", s)  # noqa: E731
                by_mode[mode] = (f"K GT + P {mode.capitalize()} ({form})", ident)
                miou = self.R.stat(ident, "val", "miou")
                rows.append([f"LS, {K} GT + {P} {mode.capitalize()}, {form} form",
                             str(self.R.stat(ident, "val", "geometry_iou")), str(miou), *self._paper5(mode)])
                bars.append((f"+P {mode.capitalize()}\n{form}", miou))
                label = lambda s, m=mode, f=form: label_id(m, f, s)  # noqa: E731
                size = self.R.result(label(self.R.seeds[0])) or {}
                quality.append([f"{mode.capitalize()}, {form} form",
                                str(self.R.stat(label, "vs_truth", "geometry_iou")),
                                str(self.R.stat(label, "vs_truth", "miou")),
                                (size.get("bytes_per_frame") or {}).get("file", "-")])
                self.claim("C4", f"K GT + P {mode.capitalize()} ({form} form) beats K GT", self._paper_text(mode),
                           self.R.stat(ident, "val", "miou"), kgt, (by_mode[mode], base))
            self.claim("C4", f"Top2 ≥ Top1 ({form} form)", "Table 5: 17.40 vs 17.10",
                       self.R.stat(by_mode["top2"][1], "val", "miou"), self.R.stat(by_mode["top1"][1], "val", "miou"),
                       (by_mode["top2"], by_mode["top1"]), at_least=True)
        self.claim("C4", "(reference) K+P GT beats K GT: more labels help at this scale", "Table 5: 18.76 vs 15.45",
                   self.R.stat(ref[1], "val", "miou"), kgt, (ref, base))
        fig, ax = self.plt.subplots(figsize=(8, 4.2))
        _bars(ax, bars, "mIoU (%)", f"C4: pseudo-labels ({self.scale.name} scale)")
        return ["## C4: training on pseudo-labels from the offboard model (paper Table 5)\n",
                f"LS models (semantic loss only, no pre-training) trained on K = {K} GT scenes plus P = {P} scenes "
                "whose "
                "labels come from the C3 offboard model of the same seed, run over the *build-binary* occupancy of "
                "those scenes (only binary data exist for them). Two forms: " + "; ".join(
                    f"*{f}*: {t}" for f, t in FORM_TEXT.items()) + ". Every row trains the same "
                f"{self.scale.finetune_steps} steps, so the rows differ in their data only.\n",
                _table(["Ours", "IoU (ours)", "mIoU (ours)", "Paper row", "IoU (paper)", "mIoU (paper)"], rows) + "\n",
                "Quality of the pseudo-labels against the true labels of the P scenes (not seen by any model):\n",
                _table(["Pseudo-labels", "IoU vs truth", "mIoU vs truth", "file bytes / frame"], quality) + "\n",
                self._figure("results_c4_pseudo_labels.png", fig)]

    @staticmethod
    def _paper5(key: str) -> list[str]:
        label, (iou, miou) = PAPER_TABLE5[key]
        return [label, f"{iou:.2f}", f"{miou:.2f}"]

    @staticmethod
    def _paper_text(mode: str) -> str:
        return f"Table 5: {PAPER_TABLE5[mode][1][1]:.2f} vs {PAPER_TABLE5['k-gt'][1][1]:.2f}"

    def c5(self) -> list[str]:
        N = self.N
        rows = []
        for strategy, n in ((INTER_BSTAR, 0), *((INTER_B, s) for s in self.sizes if s), (INTER_BSTAR, N)):
            ident = lambda s, st=strategy, n=n: ft_id("sparse-ls", st, n, s)  # noqa: E731
            rows.append([f"Sparse-LS {strategy.data_label}", n, str(self.R.stat(ident, "val", "miou")),
                         str(self.R.stat(ident, "val_gt_binary", "miou")),
                         str(self.R.stat(ident, "val_gt_segment", "miou"))])
        online = lambda s: ft_id("sparse-ls", INTER_B, N, s)  # noqa: E731
        pred, paper = self.R.stat(online, "val", "miou"), f"Sec. 1: {PAPER_GT_BINARY[0]} -> {PAPER_GT_BINARY[1]}"
        self.claim("C5", f"GT binary as queries lifts mIoU (Sparse-LS S+B, N = {N})", paper,
                   self.R.stat(online, "val_gt_binary", "miou"), pred)
        self.claim("C5", f"GT binary segmentation lifts mIoU (Sparse-LS S+B, N = {N})", paper,
                   self.R.stat(online, "val_gt_segment", "miou"), pred)
        return ["## C5: the GT binary grid in place of the binary decoder (paper Sec. 1: 39.9 -> 54.8)\n",
                "The same online checkpoints scored three ways: with their own binary decoder; with the validation "
                "labels' binary grid as the sparse transformer's occupied set (the semantic head still decides free / "
                "occupied); and as a segmenter of the GT-occupied voxels (the paper's Fig. 1(b) reading).\n",
                _table(["Model", "pre-training scenes", "mIoU, predicted binary", "mIoU, GT binary as queries",
                        "mIoU, GT binary segmentation"], rows) + "\n"]

    def per_class(self) -> list[str]:
        """Per-class validation IoU of the main models (mean over seeds): what each has learned."""
        N = self.N
        models = [("Sparse-LS, scratch", lambda s: ft_id("sparse-ls", INTER_BSTAR, 0, s)),
                  (f"Sparse-LS S+B, {N}", lambda s: ft_id("sparse-ls", INTER_B, N, s)),
                  ("LS, K GT", lambda s: ft_id("ls", REPLACE, 0, s)), ("LS, K+P GT", lambda s: kp_id("gt", s)),
                  ("offboard", lambda s: f"offboard-s{s}")]
        first = self.R.result(models[0][1](self.R.seeds[0])) or {}
        names = [c for c in (first.get("val", {}).get("per_class") or {}) if c != "free"]
        rows = []
        for name in names:
            values = [self.R.stat(ident, "val", "per_class", name) for _, ident in models]
            if any(v.n and v.mean > 0 for v in values):
                rows.append([name] + [f"{v.mean:.1f}" if v.n else "n/a" for v in values])
        if not rows:
            return []
        return ["## Per-class IoU\n", "Validation IoU per class (mean over seeds); classes no model predicts are left "
                "out.\n", _table(["class"] + [m for m, _ in models], rows) + "\n"]

    def claims_section(self) -> str:
        text = ("## Claims at a glance\n\n" + __doc__.split("\n\n", 1)[1].strip().replace("\n", " ") + "\n\n"
                + _table(["Claim", "Test (A > B)", "Paper", "Ours (A vs B)", "Difference", "Verdict"],
                         [[c["claim"], c["test"], c["paper"], f"{c['a']} vs {c['b']}", c["detail"],
                           f"**{c['verdict']}**"] for c in self.claims])
                + "\n")
        came = self.work / "verdicts.jsonl"
        if came.is_file():
            entries = [json.loads(line) for line in came.read_text().splitlines()]
            text += ("\nThe order in which the verdicts came during the run (each logged when the last of its cells "
                     "finished, before the report was written):\n\n" + _table(
                         ["#", "UTC", "Claim", "Test", "Verdict then"],
                         [[k + 1, e["utc"], e["claim"], e["test"], e["verdict"]] for k, e in enumerate(entries)])
                     + "\n")
        if self.why:
            text += ("\nWhat the learning curves say where a claim does not hold (validation mIoU at the end, the best "
                     "point of its curve, and the same model's mIoU on its own training frames):\n\n"
                     + "\n".join(self.why) + "\n")
        return text


def claim_verdicts(cells, scale, work: Path) -> list[dict]:
    """Every claim whose cells have finished for every seed, with its verdict (nothing is drawn or written)."""
    report = Report(cells, scale, work, work, draw=False)
    for section in (report.c1, report.c2, report.c3, report.c4, report.c5):
        section()
    return [c for c in report.claims if c["complete"]]


def log_new_verdicts(cells, scale, work: Path, log) -> None:
    """Log each claim's verdict the first time all its cells are done; keep the order in <work>/verdicts.jsonl."""
    path = work / "verdicts.jsonl"
    seen = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    known = {(v["claim"], v["test"]) for v in seen}
    new = [v for v in claim_verdicts(cells, scale, work) if (v["claim"], v["test"]) not in known]
    if not new:
        return
    with path.open("a") as out:
        for v in new:
            v["utc"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
            out.write(json.dumps(v) + "\n")
            log(f"  verdict {v['claim']}: {v['test']}: {v['verdict']} ({v['a']} vs {v['b']}; {v['detail']})")


def write_report(cells, scale, work: Path, docs: Path, *, failed: dict[str, str] | None = None) -> list[Path]:
    report = Report(cells, scale, work, docs / "images")
    out = [
        "# Reproducing the paper's claims in miniature\n",
        f"Generated by `python examples/reproduce_paper.py --scale {scale.name}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; do not edit by hand (how to run, what was scaled "
        "and why, and the pilot that fixed the settings: [reproduce.md](reproduce.md)).\n",
        _provenance(scale, work),
    ]
    body = [*_world(scale, work), *report.curves(), *report.c1(), *report.c2(), *report.c3(), *report.c4(),
            *report.c5(), *report.per_class()]
    out += [report.claims_section(), *body]
    if failed:
        out.append("## Cells that did not finish\n")
        out.append(_table(["cell", "reason"], [[k, v.splitlines()[0][:200]] for k, v in sorted(failed.items())]) + "\n")
    out += _compute(cells, work)
    md = docs / "results.md"
    _write_text(md, "\n".join(out))
    return [md, *report.written]


def _provenance(scale, work: Path) -> str:
    path = work / "invocations.json"
    invocations = json.loads(path.read_text()) if path.is_file() else []
    runs = "; ".join(f"{e['finished_utc']} UTC, {e['wall_minutes']} min, {e['jobs']} cell(s) in parallel on a "
                     f"{e['host_cpus']}-CPU machine" for e in invocations) or "none recorded"
    return (f"**Scale that produced these numbers: `{scale.name}`**, seeds {list(scale.seeds)} (mean ± sample std "
            f"over seeds). Invocations that ran cells: {runs}.\n")


def _world(scale, work: Path) -> list[str]:
    info = work / "world" / "world.json"
    stats = json.loads(info.read_text()).get("stats", {}) if info.is_file() else {}
    out = ["## The world\n",
           f"Synthetic driving world (`b2s_core.synth`, seed {scale.synth_seed}), nuScenes-format logs with 6 cameras "
           f"({scale.image_size[0]}x{scale.image_size[1]}) and 20 Hz LiDAR, {scale.frames} key frames per scene, "
           "labels "
           f"built from the aggregated LiDAR as Occ3D's are. N = {scale.binary_scenes} binary-only scenes built with "
           f"`b2s build-binary`, K = {scale.semantic_scenes} scenes converted with `b2s convert` + Occ3D labels "
           f"(N / K = {scale.binary_scenes / scale.semantic_scenes:g}), {scale.val_scenes} fixed validation scenes, "
           f"P = {scale.pseudo_scenes} of the binary scenes auto-labelled in C4. Grid `{scale.grid}`. Model preset "
           f"`{scale.preset}` (overrides {scale.model_overrides}); pre-training {scale.pretrain_epochs} epochs over "
           "its "
           f"scenes, every fine-tuning run {scale.finetune_steps} steps whatever its data, batch {scale.batch_size}, "
           f"AdamW lr {scale.lr:g}, cosine schedule, focal loss with class weights (count) ^ -{scale.class_balance:g}"
           + (f", at most {scale.max_steps} step(s) per run" if scale.max_steps else "")
           + ". Training and scoring use the Occ3D camera mask.\n"]
    agreement = stats.pop("binary_vs_labels", None)
    if stats:
        rows = [[name, s["scenes"], s["frames"], "x".join(map(str, s["grid"])), s["occupied_in_camera_mask_per_frame"],
                 s["camera_mask_per_frame"], s.get("ground_share_of_occupied", "-")] for name, s in stats.items()]
        out.append(_table(["file", "scenes", "frames", "grid", "occupied voxels in camera mask / frame",
                           "camera-mask voxels / frame", "ground share of occupied (%)"], rows) + "\n")
    if agreement:
        out.append(f"Binary data vs labels on the same P scenes (inside the camera mask): IoU {agreement['iou']}, "
                   f"precision {agreement['precision']}, recall {agreement['recall']} (%).\n")
    return out


def _compute(cells, work: Path) -> list[str]:
    timing = []
    for c in cells:
        r = load_result(work, c.id) if c.alias_of is None else None
        if r is not None:
            timing.append((c.kind, r.get("seconds", 0.0)))
    if not timing:
        return []
    rows = [[kind, sum(1 for k, _ in timing if k == kind), f"{sum(s for k, s in timing if k == kind) / 60:.1f}"]
            for kind in ("pretrain", "finetune", "autolabel")]
    return ["## Compute\n", _table(["cell kind", "cells", "CPU-minutes (sum of cell wall times)"], rows) + "\n"]


def write_pilot_report(cells, scale, work: Path, images: Path) -> tuple[list[Path], str]:
    """The pilot's curves (docs/images/reproduce_pilot.png) and a text table with each curve's plateau step."""
    plt = _pyplot()
    R = Results(cells, work)
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.6))
    lines = [f"pilot of scale '{scale.name}': seed {scale.pilot_seed}, fine-tuning {scale.pilot_finetune_steps} steps, "
             f"pre-training {scale.pilot_pretrain_epochs} epochs",
             "cell | points | best (step) | last | flat from step"]
    for cell in cells:
        r = R.result(cell.id) or {}
        key = "binary_iou" if cell.kind == "pretrain" else "miou"
        curve = [c for c in r.get("curve", []) if c.get(key) is not None]
        if not curve:
            continue
        steps, values = [c["step"] for c in curve], [c[key] for c in curve]
        ax = axes[1] if cell.kind == "pretrain" else axes[0]
        ax.plot(steps, values, marker=".", label=cell.describe)
        k = int(np.argmax(values))
        lines.append(f"{cell.id} | {len(values)} | {values[k]:.2f} ({steps[k]}) | {values[-1]:.2f} | "
                     f"{plateau_step(curve, key)}")
    axes[0].set(xlabel="fine-tuning step", ylabel="validation mIoU (%)", title=f"pilot: fine-tuning ({scale.name})")
    axes[1].set(xlabel="pre-training step", ylabel="validation binary IoU (%)",
                title=f"pilot: pre-training ({scale.name})")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    path = images / "reproduce_pilot.png"
    _save(fig, path)
    plt.close(fig)
    return [path], "\n".join(lines)


def _bars(ax, bars, ylabel: str, title: str) -> None:
    x = np.arange(len(bars))
    means = [s.mean if s.n else 0.0 for _, s in bars]
    errs = [0.0 if math.isnan(s.std) else s.std for _, s in bars]
    ax.bar(x, means, yerr=errs, capsize=3, color="tab:blue")
    ax.set_xticks(x, [label for label, _ in bars], fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
