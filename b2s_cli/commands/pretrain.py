"""``b2s pretrain``: stage 1, binary occupancy pre-training."""

from __future__ import annotations

from pathlib import Path

import typer

from b2s_cli.commands._training import (
    AmpOption,
    BatchSizeOption,
    BinaryBalanceOption,
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
    SyncBatchNormOption,
    WorkersOption,
    claim_run_folder,
    expand_paths,
    print_result,
)
from b2s_cli.errors import cli_errors
from b2s_cli.options import check_number, value_of
from b2s_core.train.config import resolve_config


@cli_errors
def pretrain(
    data: list[Path] = typer.Option(None, "--data",
                                    help="Binary occupancy shard(s); repeat the option or quote a glob ('shards/*.h5').",
                                    show_default=False),
    # Choices with a metavar here name their values in the help text, not as the type: listed there they
    # would widen the type column until option names are cut short in an 80-column terminal.
    model: Model = typer.Option(None, metavar="<variant>",
                                help="Variant: sparse-ls, sparse-bevformer (proposed), ls, bevformer (baselines). "
                                     "(default: sparse-ls)", show_default=False),
    preset: Preset = typer.Option(None, metavar="<preset>", help="Model sizes: paper, small or tiny. (default: small)", show_default=False),
    epochs: int = typer.Option(None, help="Epochs over the data. (default: 24)", show_default=False),
    batch_size: BatchSizeOption = None,
    gpus: GpusOption = 1,
    out: RunFolderOption = None,
    config: ConfigFileOption = None,
    resume: ResumeOption = False,
    overwrite: OverwriteOption = False,
    val_data: list[Path] = typer.Option(None, "--val-data", help="Validation file(s) for the periodic binary IoU.", show_default=False),
    camera_mask: bool = typer.Option(None, "--camera-mask/--no-camera-mask",
                                     help="Train and validate on mask_camera voxels only (every file must carry it). "
                                          "(default: off)", show_default=False),
    lr: LearningRateOption = None,
    binary_balance: BinaryBalanceOption = None,
    weight_decay: float = typer.Option(None, "--weight-decay", help="AdamW weight decay. (default: 1e-2)", show_default=False),
    amp: AmpOption = None,
    sync_bn: SyncBatchNormOption = None,
    device: DeviceOption = None,
    workers: WorkersOption = None,
    max_steps: MaxStepsOption = None,
    backbone_weights: Path = typer.Option(None, "--backbone-weights",
                                          help="Local ImageNet (torchvision layout) or detector checkpoint (backbone. "
                                               "/ img_backbone. keys) for the image backbone; never downloaded.",
                                          show_default=False),
    frozen_stages: FrozenStagesOption = None,
    norm_eval: NormEvalOption = None,
    seed: SeedOption = None,
    set_: list[str] = typer.Option(None, "--set",
                                   help="Any other setting as key=value (YAML value), e.g. --set warmup_steps=100.",
                                   show_default=False),
) -> None:
    """Pre-train on binary occupancy (BCE only): the proposed models up to the binary decoder, baselines whole.

    Example: b2s pretrain --data openscene-binary.h5 --model sparse-ls --preset paper --epochs 24 --batch-size 8 --gpus 4 --out runs/pre
    """
    check_number("--gpus", gpus, at_least=1)  # the other values are checked with the whole config
    options = dict(stage="pretrain", data=expand_paths(data), model=value_of(model), preset=value_of(preset), epochs=epochs,
                   batch_size=batch_size, out=str(out) if out else None, resume=resume or None,
                   val_data=expand_paths(val_data), use_camera_mask=camera_mask, lr=lr, binary_balance=binary_balance,
                   weight_decay=weight_decay, amp=value_of(amp), sync_bn=sync_bn,
                   device=value_of(device), workers=workers, max_steps=max_steps,
                   backbone_weights=str(backbone_weights) if backbone_weights else None, frozen_stages=frozen_stages,
                   norm_eval=norm_eval, seed=seed)
    resolved = resolve_config(config_file=config, options=options, overrides=set_,
                              defaults={"out": "runs/pretrain", **({} if resume else {"model": "sparse-ls"})})
    # Imported here, not at the top: training imports torch, which `b2s info` / `--help` must not load.
    from b2s_core.train.launch import launch

    with claim_run_folder(resolved, config_file=config, overwrite=overwrite):
        result = launch(resolved, gpus)
    print_result(result)
