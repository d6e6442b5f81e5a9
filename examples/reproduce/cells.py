"""The cells of the reproduction: every training run / labelling job, its inputs and what it feeds.

A cell is one seed of one table entry. Cells form a small graph (pre-training -> fine-tuning,
offboard model -> pseudo-labels -> training on them); the runner walks it in dependency order and
caches each cell's result as ``cells/<id>.json``.

    E1  pretrain-<variant>-n<N>-s<seed>        binary pre-training on the first N binary scenes
        e1-<variant>-<strategy>-n<N>-s<seed>   fine-tuning on the K labelled scenes (N = 0: from scratch)
    E2  e2-offboard-s<seed>                    Sparse-LS with the GT binary as input, trained on the K scenes
    E3  e3-label-<top1|top2>-s<seed>           the offboard model labels the P binary scenes
        e3-<kp-gt|kp-top1|kp-top2>-s<seed>     LS trained on K GT scenes + P scenes (GT or pseudo-labels)
    E4  no cell of its own: every Sparse-* fine-tuning cell is also scored with the GT binary grid
        in place of its binary decoder's output.
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


@dataclass
class Cell:
    id: str
    kind: str  # 'pretrain' | 'finetune' | 'autolabel'
    experiment: str  # 'E1' ... 'E3' ('pre' for pre-training)
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
            return f"auto-label P scenes ({p['mode']}), seed {self.seed}"
        what = p.get("what") or (f"{DISPLAY[p['variant']]} {p['strategy_label']} {p['data_label']}, "
                                 f"{p.get('pretrain_scenes', 0)} pre-training scenes")
        return f"{self.experiment} {what}, seed {self.seed}"


def e1_id(variant: str, strategy: Strategy, scenes: int, seed: int) -> str:
    return f"e1-{variant}-{strategy.key}-n{scenes}-s{seed}"


def pretrain_id(variant: str, scenes: int, seed: int) -> str:
    return f"pretrain-{variant}-n{scenes}-s{seed}"


def make_cells(scale) -> list[Cell]:
    """Every cell of ``scale`` in an order that respects dependencies."""
    cells: list[Cell] = []
    kinds = ["ls"] + (["bevformer"] if scale.dense_pair else [])
    for seed in scale.seeds:
        # -- E1: pre-training then fine-tuning with each strategy
        for kind in kinds:
            variants = sorted({v for v, _ in FAMILIES[kind]})
            for n in scale.pretrain_sizes:
                if n == 0:
                    continue
                for variant in variants:
                    cells.append(Cell(pretrain_id(variant, n, seed), "pretrain", "pre", seed,
                                      {"variant": variant, "scenes": n}))
            for n in scale.pretrain_sizes:
                for variant, strategy in FAMILIES[kind]:
                    deps = [pretrain_id(variant, n, seed)] if n else []
                    params = {"variant": variant, "strategy": strategy.strategy, "binary_data": strategy.binary_data,
                              "strategy_key": strategy.key, "strategy_label": strategy.label,
                              "data_label": strategy.data_label, "pretrain_scenes": n, "semantic": ["semantic"],
                              "pretrain_data": n if strategy.binary_data == "b" else 0}
                    alias = None
                    if n == 0 and strategy is INTER_B:
                        # No pre-training scenes: S+B has no B to add and is exactly S+B*.
                        alias = e1_id(variant, INTER_BSTAR, 0, seed)
                    cells.append(Cell(e1_id(variant, strategy, n, seed), "finetune", "E1", seed, params, deps, alias))
        # -- E2: the offboard model on the same K labelled scenes
        off = f"e2-offboard-s{seed}"
        cells.append(Cell(off, "finetune", "E2", seed, {"variant": "sparse-ls", "offboard": True, "semantic": ["semantic"],
                                                        "what": "offboard Sparse-LS (GT binary input)"}))
        # -- E3: pseudo-labels of the P binary scenes, and LS trained on them
        for mode in ("top1", "top2"):
            cells.append(Cell(f"e3-label-{mode}-s{seed}", "autolabel", "E3", seed, {"mode": mode}, [off]))
        base = {"variant": "ls", "strategy": "replace-head", "binary_data": "bstar"}
        cells.append(Cell(f"e3-kp-gt-s{seed}", "finetune", "E3", seed,
                          {**base, "semantic": ["semantic", "pseudo_gt"], "what": "LS on K+P GT scenes"}))
        for mode in ("top1", "top2"):
            cells.append(Cell(f"e3-kp-{mode}-s{seed}", "finetune", "E3", seed,
                              {**base, "semantic": ["semantic"], "pseudo": f"e3-label-{mode}-s{seed}",
                               "what": f"LS on K GT + P {mode.capitalize()} pseudo-labelled scenes"},
                              [f"e3-label-{mode}-s{seed}"]))
    return cells
