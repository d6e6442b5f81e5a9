"""``b2s finetune``: stage 2, semantic fine-tuning with the paper's strategies (and the offboard model)."""

from __future__ import annotations

from pathlib import Path

import typer

from b2s_cli.commands._training import (
    AmpOption,
    BatchSizeOption,
    BinaryBalanceOption,
    BinaryData,
    ConfigFileOption,
    DeviceOption,
    FrozenStagesOption,
    GpusOption,
    LearningRateOption,
    MaxStepsOption,
    Model,
    NormEvalOption,
    OverwriteOption,
    Preset,
    ResumeOption,
    RunFolderOption,
    SeedOption,
    Strategy,
    SyncBatchNormOption,
    WorkersOption,
    claim_run_folder,
    expand_paths,
    print_result,
)
from b2s_cli.errors import cli_errors
from b2s_cli.options import check_number, refuse_together, value_of
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
    batch_size: BatchSizeOption = None,
    gpus: GpusOption = 1,
    out: RunFolderOption = None,
    config: ConfigFileOption = None,
    resume: ResumeOption = False,
    overwrite: OverwriteOption = False,
    val_data: list[Path] = typer.Option(None, "--val-data", help="Validation file(s) for the periodic IoU / mIoU.", show_default=False),
    camera_mask: bool = typer.Option(None, "--camera-mask/--no-camera-mask",
                                     help="Train and validate on mask_camera voxels only (Occ3D). (default: off)",
                                     show_default=False),
    lr: LearningRateOption = None,
    class_balance: float = typer.Option(None, "--class-balance",
                                        help="Focal-loss class weights (count)^-P from the training labels; "
                                             "0 = unweighted, as the paper; 0.5 helps short runs. (default: 0)",
                                        show_default=False),
    binary_balance: BinaryBalanceOption = None,
    amp: AmpOption = None,
    sync_bn: SyncBatchNormOption = None,
    device: DeviceOption = None,
    workers: WorkersOption = None,
    backbone_weights: Path = typer.Option(None, "--backbone-weights",
                                          help="Without --init: local ImageNet (torchvision layout) or detector "
                                               "checkpoint (backbone. / img_backbone. keys) for the image backbone; "
                                               "never downloaded.", show_default=False),
    frozen_stages: FrozenStagesOption = None,
    norm_eval: NormEvalOption = None,
    max_steps: MaxStepsOption = None,
    seed: SeedOption = None,
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
