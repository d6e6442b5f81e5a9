"""The cells of the reproduction: every training run / labelling job, its inputs and what it feeds.

A cell is one seed of one table entry. Cells form a small graph (pre-training -> fine-tuning,
offboard model -> pseudo-labels -> training on them); the runner walks it in dependency order and
caches each cell's result as ``cells/<id>.json``. Each claim reads the cells it names; cells that
two claims share are trained once.

    pretrain-<variant>-n<N>-s<seed>       binary pre-training on the first N binary scenes
    ft-<variant>-<strategy>-n<N>-s<seed>  fine-tuning on the K labelled scenes (N = 0: from scratch)
    offboard-s<seed>                      Sparse-LS with the GT binary as input, trained on the K scenes
    label-<top1|top2>-<form>-s<seed>      the offboard model labels the P binary scenes (form: paper | given)
    kp-<top1|top2>-<form>-s<seed>         LS trained on K GT scenes + those P pseudo-labelled scenes
    kp-gt-s<seed>                         LS trained on K + P GT scenes (the reference pseudo-labels aim at)

    C1  pre-training on N binary scenes beats training from scratch, more with more:
        ft-sparse-ls-b-n{0, N/4, N} (and LS Replacing Head at 0 and N, from C2 and C4)
    C2  the fine-tuning strategies at N: ft-ls-replace, ft-ls-multi, ft-sparse-ls-bstar, ft-sparse-ls-b
    C3  offboard >= 1.5x online mIoU: offboard vs ft-sparse-ls-b-n<N>
    C4  K GT + P pseudo-labelled scenes beat K GT, Top2 >= Top1, in both forms:
        kp-<mode>-<form> vs ft-ls-replace-n0
    C5  the GT binary lifts mIoU: every Sparse-LS fine-tuning cell scored again with the GT binary
        (no cell of its own)
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Strategy:
    key: str  # short name in cell ids
    label: str  # as in the paper's Table 1
    strategy: str  # TrainConfig.strategy
    binary_data: str  # TrainConfig.binary_data
    data_label: str  # 'S', 'S+B*', 'S+B'


# The four fine-tuning strategies of Table 1, with the model family each applies to.
REPLACE = Strategy("replace", "Replacing Head", "replace-head", "bstar", "S")
MULTI = Strategy("multi", "Multi-Head", "multi-head", "bstar", "S+B*")
INTER_BSTAR = Strategy("bstar", "Intermediate Head", "intermediate", "bstar", "S+B*")
INTER_B = Strategy("b", "Intermediate Head", "intermediate", "b", "S+B")

# (variant, strategy) rows of Table 1 per image-to-3D kind, in the paper's order.
FAMILIES = {
    "ls": [("ls", REPLACE), ("ls", MULTI), ("sparse-ls", INTER_BSTAR), ("sparse-ls", INTER_B)],
    "bevformer": [("bevformer", REPLACE), ("bevformer", MULTI), ("sparse-bevformer", INTER_BSTAR),
                  ("sparse-bevformer", INTER_B)],
}
DISPLAY = {"ls": "LS", "sparse-ls": "Sparse-LS", "bevformer": "BEVFormer", "sparse-bevformer": "Sparse-BEVFormer"}
# The two forms of pseudo-labels (b2s autolabel --form): 'paper' keeps free among the candidates (the
# offboard model's own geometry), 'given' puts the best non-free class on every GT-occupied voxel.
LABEL_FORMS = {"paper": "paper", "given": "given-geometry"}
MODES = ("top1", "top2")


@dataclass
class Cell:
    id: str
    kind: str  # 'pretrain' | 'finetune' | 'autolabel'
    claim: str  # 'C1' ... 'C5' (the first claim that uses it; 'pre' for pre-training)
    seed: int
    params: dict = field(default_factory=dict)
    deps: list[str] = field(default_factory=list)
    alias_of: str | None = None  # same configuration as another cell: reuse its result

    @property
    def describe(self) -> str:
        p = self.params
        if self.kind == "pretrain":
            return f"pre-train {DISPLAY[p['variant']]} on {p['scenes']} binary scenes, seed {self.seed}"
        if self.kind == "autolabel":
            return f"auto-label the P scenes ({p['mode']}, {p['form']} form), seed {self.seed}"
        what = p.get("what") or (f"{DISPLAY[p['variant']]} {p['strategy_label']} {p['data_label']}, "
                                 f"{p.get('pretrain_scenes', 0)} pre-training scenes")
        return f"{self.claim} {what}, seed {self.seed}"


def ft_id(variant: str, strategy: Strategy, scenes: int, seed: int) -> str:
    return f"ft-{variant}-{strategy.key}-n{scenes}-s{seed}"


def pretrain_id(variant: str, scenes: int, seed: int) -> str:
    return f"pretrain-{variant}-n{scenes}-s{seed}"


def label_id(mode: str, form: str, seed: int) -> str:
    return f"label-{mode}-{form}-s{seed}"


def kp_id(what: str, seed: int) -> str:
    """``what``: 'gt' or '<mode>-<form>'."""
    return f"kp-{what}-s{seed}"


def _finetune(variant: str, strategy: Strategy, n: int, seed: int, claim: str) -> Cell:
    deps = [pretrain_id(variant, n, seed)] if n else []
    params = {"variant": variant, "strategy": strategy.strategy, "binary_data": strategy.binary_data,
              "strategy_key": strategy.key, "strategy_label": strategy.label, "data_label": strategy.data_label,
              "pretrain_scenes": n, "semantic": ["semantic"], "pretrain_data": n if strategy.binary_data == "b" else 0}
    # No pre-training scenes: S+B has no B to add and is exactly S+B*.
    alias = ft_id(variant, INTER_BSTAR, 0, seed) if n == 0 and strategy is INTER_B else None
    return Cell(ft_id(variant, strategy, n, seed), "finetune", claim, seed, params, deps, alias)


def _seed_cells(scale, seed: int) -> list[Cell]:
    N, sizes = scale.binary_scenes, scale.pretrain_sizes
    kinds = ["ls"] + (["bevformer"] if scale.dense_pair else [])
    cells: list[Cell] = []
    for kind in kinds:
        dense, sparse = sorted({v for v, _ in FAMILIES[kind]}, key=lambda v: v.startswith("sparse-"))
        # pre-training: the sparse model at every size (C1), the dense baseline at N (C2)
        cells += [Cell(pretrain_id(sparse, n, seed), "pretrain", "pre", seed, {"variant": sparse, "scenes": n})
                  for n in sizes if n]
        cells.append(Cell(pretrain_id(dense, N, seed), "pretrain", "pre", seed, {"variant": dense, "scenes": N}))
        # C1: the sparse model's S+B at every size (at 0: S+B*)
        cells.append(_finetune(sparse, INTER_BSTAR, 0, seed, "C1"))
        cells += [_finetune(sparse, INTER_B, n, seed, "C1") for n in sizes]
        # C2: the other strategies at N
        cells += [_finetune(dense, REPLACE, N, seed, "C2"), _finetune(dense, MULTI, N, seed, "C2"),
                  _finetune(sparse, INTER_BSTAR, N, seed, "C2")]
    # C3: the offboard model on the same K labelled scenes
    off = f"offboard-s{seed}"
    cells.append(Cell(off, "finetune", "C3", seed, {"variant": "sparse-ls", "offboard": True, "semantic": ["semantic"],
                                                    "what": "offboard Sparse-LS (GT binary input)"}))
    # C4: LS (semantic loss only, no pre-training) on K GT scenes, + P pseudo-labelled, + P GT
    cells.append(_finetune("ls", REPLACE, 0, seed, "C4"))
    base = {"variant": "ls", "strategy": "replace-head", "binary_data": "bstar"}
    cells.append(Cell(kp_id("gt", seed), "finetune", "C4", seed,
                      {**base, "semantic": ["semantic", "pseudo_gt"], "what": "LS on K+P GT scenes"}))
    for form in LABEL_FORMS:
        for mode in MODES:
            label = label_id(mode, form, seed)
            cells.append(Cell(label, "autolabel", "C4", seed, {"mode": mode, "form": LABEL_FORMS[form]}, [off]))
            cells.append(Cell(kp_id(f"{mode}-{form}", seed), "finetune", "C4", seed,
                              {**base, "semantic": ["semantic"], "pseudo": label,
                               "what": f"LS on K GT + P {mode.capitalize()} pseudo-labelled scenes ({form} form)"},
                              [label]))
    return cells


def make_cells(scale) -> list[Cell]:
    """Every cell of ``scale`` in an order that respects dependencies."""
    return [cell for seed in scale.seeds for cell in _seed_cells(scale, seed)]


def pilot_cells(scale) -> list[Cell]:
    """The pilot: the longest-to-fit cell of each kind, run longer (``scale.pilot()``) on the pilot seed.

    Pre-training on all N scenes; the sparse model fine-tuned from it with S+B (the most data per
    step); LS from scratch on the K scenes alone (the least); LS on K + P GT scenes (the most labels).
    Their validation curves fix pretrain_epochs and finetune_steps before any claim cell runs.
    """
    pilot, seed, N = scale.pilot(), scale.pilot_seed, scale.binary_scenes
    keep = {pretrain_id("sparse-ls", N, seed), ft_id("sparse-ls", INTER_B, N, seed), ft_id("ls", REPLACE, 0, seed),
            kp_id("gt", seed)}
    return [cell for cell in _seed_cells(pilot, seed) if cell.id in keep]
