"""``b2s finetune``: stage 2, semantic fine-tuning with the paper's strategies (and the offboard model)."""

from __future__ import annotations

from pathlib import Path

import typer

from b2s_cli.commands._training import (
    Amp,
    BinaryData,
    Model,
    Preset,
    Strategy,
    claim_run_folder,
    expand_paths,
    print_result,
)
from b2s_cli.errors import cli_errors
from b2s_cli.options import DEVICE_HELP, Device, check_number, refuse_together, value_of
from b2s_core.train.config import resolve_config


@cli_errors
def finetune(
    init: Path = typer.Option(None, "--init", help="Checkpoint to start from (a b2s pretrain run's checkpoint.pt).", show_default=False),
    semantic_data: list[Path] = typer.Option(None, "--semantic-data",
                                             help="Semantically labelled shard(s) S; repeat or quote a glob.",
                                             show_default=False),
    pseudo_data: list[Path] = typer.Option(None, "--pseudo-data",
                                           help="Pseudo-label file(s) from b2s autolabel (Top1 or Top2), mixed with S.",
                                           show_default=False),
    # Choices with a metavar here name their values in the help text, not as the type: listed there they
    # would widen the type column until option names are cut short in an 80-column terminal.
    strategy: Strategy = typer.Option(None, metavar="<strategy>",
                                      help="intermediate (proposed, sparse models), multi-head or replace-head (dense "
                                           "baselines). (default: intermediate)", show_default=False),
    binary_data: BinaryData = typer.Option(None, "--binary-data",
                                           help="bstar: binaries of S only (S+B*); b: plus a pre-training batch each "
                                                "step (S+B). (default: bstar)", show_default=False),
    pretrain_data: list[Path] = typer.Option(None, "--pretrain-data",
                                             help="Binary shard(s) B drawn from with --binary-data b.",
                                             show_default=False),
    offboard: bool = typer.Option(False, "--offboard", help="Train the auto-labelling model: GT binary as input, focal loss only."),
    model: Model = typer.Option(None, metavar="<variant>",
                                help="Variant when training without --init (else taken from the checkpoint): "
                                     "sparse-ls, sparse-bevformer (proposed), ls, bevformer (baselines).",
                                show_default=False),
    preset: Preset = typer.Option(None, metavar="<preset>", help="Model sizes without --init: paper, small or tiny.", show_default=False),
    epochs: int = typer.Option(None,
                               help="Epochs over the semantic data. (default: 24; 64 with --offboard, as the paper)",
                               show_default=False),
    batch_size: int = typer.Option(None, "--batch-size", help="Global batch over all processes. (default: 8)", show_default=False),
    gpus: int = typer.Option(1, help="Processes on this machine (one per GPU; with --device cpu, Gloo processes). >1 starts torchrun."),
    out: Path = typer.Option(None, help="Run folder: config.yaml, checkpoint.pt, metrics.jsonl / .csv.", show_default=False),
    config: Path = typer.Option(None, "--config",
                                help="YAML or TOML file of training settings (options given here win).",
                                show_default=False),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly where it stopped."),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="Start over in an --out that holds an earlier run (its metrics logs are "
                                        "removed)."),
    val_data: list[Path] = typer.Option(None, "--val-data", help="Validation file(s) for the periodic IoU / mIoU.", show_default=False),
    camera_mask: bool = typer.Option(None, "--camera-mask/--no-camera-mask",
                                     help="Train and validate on mask_camera voxels only (Occ3D). (default: off)",
                                     show_default=False),
    lr: float = typer.Option(None, help="AdamW learning rate. (default: 2e-4)", show_default=False),
    class_balance: float = typer.Option(None, "--class-balance",
                                        help="Focal-loss class weights (count)^-P from the training labels; "
                                             "0 = unweighted, as the paper; 0.5 helps short runs. (default: 0)",
                                        show_default=False),
    binary_balance: float = typer.Option(None, "--binary-balance",
                                         help="Weigh the BCE's occupied voxels by (free / occupied)^P over the "
                                              "training data; 0 = unweighted, as the paper; 0.5 helps short runs learn "
                                              "what stands on the ground. (default: 0)", show_default=False),
    amp: Amp = typer.Option(None, metavar="<mode>",
                            help="Mixed precision on CUDA: none, bf16 or fp16. (default: none)", show_default=False),
    sync_bn: bool = typer.Option(None, "--sync-bn/--no-sync-bn", help="SyncBatchNorm across GPUs. (default: off)", show_default=False),
    device: Device = typer.Option(None, metavar="<device>", help=f"{DEVICE_HELP} (default: auto)", show_default=False),
    workers: int = typer.Option(None, help="DataLoader workers per process. (default: 2)", show_default=False),
    backbone_weights: Path = typer.Option(None, "--backbone-weights",
                                          help="Without --init: local ImageNet (torchvision layout) or detector "
                                               "checkpoint (backbone. / img_backbone. keys) for the image backbone; "
                                               "never downloaded.", show_default=False),
    frozen_stages: int = typer.Option(None, "--frozen-stages",
                                      help="Backbone stages kept frozen: -1 none, 0 the stem, "
                                           "n the stem and stages 1..n. (default: -1)", show_default=False),
    norm_eval: bool = typer.Option(None, "--norm-eval/--no-norm-eval",
                                   help="Keep the backbone's BatchNorm statistics frozen. (default: off)",
                                   show_default=False),
    max_steps: int = typer.Option(None, "--max-steps",
                                  help="Stop after this many optimiser steps (shortens the schedule).",
                                  show_default=False),
    seed: int = typer.Option(None, help="Random seed. (default: 0)", show_default=False),
    set_: list[str] = typer.Option(None, "--set",
                                   help="Any other setting as key=value (YAML value), e.g. "
                                        "--set semantic_loss_weight=2.", show_default=False),
) -> None:
    """Fine-tune on semantic occupancy (focal + binary BCE) with a strategy of the paper.

    Example: b2s finetune --init runs/pre/checkpoint.pt --semantic-data occ3d-train.h5 --strategy intermediate --binary-data b --pretrain-data openscene-binary.h5 --out runs/ft
    """  # noqa: E501  # Typer's --help keeps a docstring's line breaks: the example command stays one line
    check_number("--gpus", gpus, at_least=1)  # the other values are checked with the whole config
    why = "--offboard trains the auto-labeller (focal loss only), which has no strategy or binary data"
    refuse_together("--offboard", offboard, "--strategy", strategy is not None, why)
    refuse_together("--offboard", offboard, "--binary-data", binary_data is not None, why)
    options = dict(stage="finetune", init=str(init) if init else None, semantic_data=expand_paths(semantic_data),
                   pseudo_data=expand_paths(pseudo_data), strategy=value_of(strategy), binary_data=value_of(binary_data),
                   pretrain_data=expand_paths(pretrain_data), offboard=offboard or None, model=value_of(model), preset=value_of(preset),
                   epochs=epochs, batch_size=batch_size, out=str(out) if out else None, resume=resume or None,
                   val_data=expand_paths(val_data), use_camera_mask=camera_mask, lr=lr, class_balance=class_balance,
                   binary_balance=binary_balance,
                   amp=value_of(amp), sync_bn=sync_bn, backbone_weights=str(backbone_weights) if backbone_weights else None,
                   frozen_stages=frozen_stages, norm_eval=norm_eval,
                   device=value_of(device), workers=workers, max_steps=max_steps, seed=seed)
    resolved = resolve_config(config_file=config, options=options, overrides=set_, defaults={"out": "runs/finetune"})
    # Imported here, not at the top: training imports torch, which `b2s info` / `--help` must not load.
    from b2s_core.train.launch import launch

    with claim_run_folder(resolved, config_file=config, overwrite=overwrite):
        result = launch(resolved, gpus)
    print_result(result)
