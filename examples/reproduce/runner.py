"""Run one cell (train / label / score) and cache its result; run many cells in dependency order.

A cell's result is ``<work>/cells/<id>.json``, written atomically when everything of the cell is
done: its presence means "finished, skip". Training runs keep their checkpoint in
``<work>/runs/<id>/`` and resume from it when a run was interrupted.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

Log = Callable[[str], None]


def result_path(work: Path, cell_id: str) -> Path:
    return work / "cells" / f"{cell_id}.json"


def load_result(work: Path, cell_id: str) -> dict | None:
    path = result_path(work, cell_id)
    return json.loads(path.read_text()) if path.is_file() else None


def _write_result(work: Path, cell_id: str, data: dict) -> None:
    path = result_path(work, cell_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(json.dumps(data, indent=1))
    temp.replace(path)


def _device() -> str:
    """CUDA when the machine has it (the ``gpu`` scale), else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_settings(work: Path, scale) -> None:
    """Refuse a work folder whose cached cells were trained with other settings (they would be reused)."""
    from reproduce.world import WorldError

    path = work / "settings.json"
    key = scale.training_key()
    if path.is_file():
        saved = json.loads(path.read_text())
        changed = sorted(k for k in set(saved) | set(key) if saved.get(k) != key.get(k))
        if changed:
            raise WorldError(f"{path}: the cached cells were trained with other settings ({', '.join(changed)}); "
                             "use another --work folder")
        return
    if any((work / "cells").glob("*.json")):
        raise WorldError(f"{work / 'cells'}: cached cells without a record of their training settings (an older "
                         "version of this script); use another --work folder")
    work.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(json.dumps(key, indent=1))
    temp.replace(path)


# -- one cell ---------------------------------------------------------------------------------------------
def _train(config_values: dict) -> dict:
    """Train (or resume, or skip when finished) one run; returns its step count."""
    from b2s_core.models.checkpoint import read_checkpoint
    from b2s_core.train.config import TrainConfig
    from b2s_core.train.loop import CHECKPOINT_NAME, train

    ckpt = Path(config_values["out"]) / CHECKPOINT_NAME
    if ckpt.is_file():
        progress = read_checkpoint(ckpt).get("progress", {})
        if progress.get("finished"):
            return {"steps": progress.get("step"), "resumed": "finished before"}
        config_values = {**config_values, "resume": True}
    result = train(TrainConfig(**config_values), show_progress=False)
    if result.finished:
        _drop_optimizer_state(ckpt)
    return {"steps": result.state.step}


def _drop_optimizer_state(ckpt: Path) -> None:
    """A finished run is only loaded for its weights (scoring, fine-tuning from it): keep those alone.

    AdamW's two moments are twice the model: the tiny preset's checkpoint goes from 135 MB to 45 MB,
    and a default-scale work folder from ~11 GB to ~4 GB.
    """
    from b2s_core.models.checkpoint import read_checkpoint, save_checkpoint

    state = read_checkpoint(ckpt)
    state.update(optimizer=None, scheduler=None, scaler=None)
    del state["format"], state["version"]  # save_checkpoint writes its own
    save_checkpoint(ckpt, state)


def _score(checkpoint: Path, val: Path, pred_path: Path, *, gt_binary: bool) -> dict:
    """Predict the validation scenes with ``b2s_core.apps.predict`` and score them with ``b2s_core.apps.evaluate``.

    gt_binary: feed the ground-truth binary grid (of the validation labels) to the sparse transformer
    in place of the binary decoder's output (C5); offboard models always get it.
    """
    from b2s_core.apps.evaluate import EvaluateConfig, evaluate_files
    from b2s_core.apps.predict import open_inputs, predict_to_file
    from b2s_core.models.checkpoint import load_checkpoint

    loaded = load_checkpoint(checkpoint)
    model_config = loaded.model_config.replace(offboard=True) if gt_binary else loaded.model_config
    dataset = open_inputs(str(val), model_config)
    predict_to_file(loaded.model, dataset, pred_path, model_config=model_config, device=_device())
    result = evaluate_files(val, pred_path, EvaluateConfig(rayiou=False))
    pred_path.unlink()
    return {"miou": result.miou, "geometry_iou": result.geometry_iou, "binary_iou": result.binary_iou,
            "per_class": dict(zip(result.class_names, result.iou)), "frames": result.frames}


def _score_segment(checkpoint: Path, val: Path, pred_path: Path) -> dict:
    """Score the model as a segmenter of the GT-occupied voxels (Fig. 1(b) of the paper).

    The validation labels' binary grid is the occupied set, and the output keeps it exactly: each
    GT-occupied voxel gets the model's best non-free class, every other voxel is free. This is what
    ``b2s autolabel --form given-geometry`` writes (Top1), so the same function produces it.
    """
    from b2s_core.apps.autolabel import AutolabelConfig, autolabel_to_file
    from b2s_core.apps.evaluate import EvaluateConfig, evaluate_files
    from b2s_core.apps.predict import open_inputs
    from b2s_core.models.checkpoint import load_checkpoint

    loaded = load_checkpoint(checkpoint)
    model_config = loaded.model_config.replace(offboard=True)
    dataset = open_inputs(str(val), model_config)
    autolabel_to_file(loaded.model, dataset, pred_path, model_config=model_config, taxonomy=dataset.occ.taxonomy,
                      config=AutolabelConfig(mode="top1", form="given-geometry", device=_device()))
    result = evaluate_files(val, pred_path, EvaluateConfig(rayiou=False))
    pred_path.unlink()
    return {"miou": result.miou, "geometry_iou": result.geometry_iou,
            "per_class": dict(zip(result.class_names, result.iou)), "frames": result.frames}


def needs_segment_score(cell) -> bool:
    return cell.kind == "finetune" and cell.params["variant"].startswith("sparse-")


def backfill(cells, world, work: Path, log: Log) -> None:
    """Add scores introduced after a cell was cached (its checkpoint is kept), without retraining."""
    for cell in cells:
        result = load_result(work, cell.id)
        if result is None or cell.alias_of or not needs_segment_score(cell) or "val_gt_segment" in result:
            continue
        run_dir = work / "runs" / cell.id
        result["val_gt_segment"] = _score_segment(run_dir / "checkpoint.pt", world.val, run_dir / "pred_seg.h5")
        _write_result(work, cell.id, result)
        log(f"  backfilled the GT-binary segmentation score of {cell.id}")


def run_cell(cell, world, scale, work: Path) -> dict:
    """Do one cell's work; returns (and caches) its result."""
    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    run_dir = work / "runs" / cell.id
    p = cell.params
    common = dict(out=str(run_dir), preset=scale.preset, model_overrides=dict(scale.model_overrides),
                  batch_size=scale.batch_size, lr=scale.lr, seed=cell.seed, device=_device(), workers=0,
                  max_steps=scale.max_steps, use_camera_mask=True, log_every_steps=5, ckpt_every_steps=50,
                  val_data=[str(world.val)])
    result: dict = {"id": cell.id, "claim": cell.claim, "seed": cell.seed, "params": p}
    if cell.kind == "pretrain":
        files = [str(f) for f in world.binary_files(p["scenes"])]
        result["train"] = _train({**common, "stage": "pretrain", "model": p["variant"], "data": files,
                                  "epochs": scale.pretrain_epochs, "val_every_epochs": 1})
        result["curve"] = _curve(run_dir)
    elif cell.kind == "autolabel":
        from b2s_core.apps.autolabel import AutolabelConfig, autolabel

        out = work / "labels" / f"{cell.id}.h5"
        out.parent.mkdir(parents=True, exist_ok=True)
        if not out.is_file():
            report = autolabel(work / "runs" / cell.deps[0] / "checkpoint.pt", [str(f) for f in world.pseudo_binary],
                               out, AutolabelConfig(mode=p["mode"], form=p["form"], device=_device()))
            result["bytes_per_frame"] = report.bytes_per_frame
        result["labels"] = str(out)
        # How good the pseudo-labels are against the truth of the same scenes (not used for training).
        result["vs_truth"] = _score_labels(out, world.pseudo_gt)
    else:
        files = {"semantic": str(world.semantic), "pseudo_gt": str(world.pseudo_gt)}
        semantic = [files[k] for k in p["semantic"]]
        pseudo = [str(work / "labels" / f"{p['pseudo']}.h5")] if p.get("pseudo") else []
        values = {**common, "stage": "finetune", "model": p["variant"], "semantic_data": semantic, "pseudo_data": pseudo,
                  # As many epochs as it takes: the step count ends every fine-tuning run (scales.py).
                  "epochs": 10**6, "max_steps": min(scale.finetune_steps, scale.max_steps or scale.finetune_steps),
                  "ckpt_every_epochs": 10**6, "class_balance": scale.class_balance,
                  "offboard": bool(p.get("offboard", False)),
                  "val_every_epochs": _epochs_per_validation(semantic + pseudo, scale)}
        if not p.get("offboard"):
            values.update(strategy=p["strategy"], binary_data=p["binary_data"])
        if p.get("pretrain_scenes"):
            values["init"] = str(work / "runs" / cell.deps[0] / "checkpoint.pt")
        if p.get("pretrain_data"):
            values["pretrain_data"] = [str(f) for f in world.binary_files(p["pretrain_data"])]
        result["train"] = _train(values)
        result["curve"] = _curve(run_dir)
        ckpt = run_dir / "checkpoint.pt"
        result["val"] = _score(ckpt, world.val, run_dir / "pred.h5", gt_binary=False)
        # The same model on its own K labelled frames: tells under-fitting (both low) from over-fitting.
        result["train_fit"] = _score(ckpt, world.semantic, run_dir / "pred_train.h5", gt_binary=bool(p.get("offboard")))
        if p["variant"].startswith("sparse-") and not p.get("offboard"):
            result["val_gt_binary"] = _score(ckpt, world.val, run_dir / "pred_gt.h5", gt_binary=True)  # C5
        if needs_segment_score(cell):
            result["val_gt_segment"] = _score_segment(ckpt, world.val, run_dir / "pred_seg.h5")  # C3, C5
    result["seconds"] = round(time.perf_counter() - started, 1)
    _write_result(work, cell.id, result)
    return result


def _epochs_per_validation(files: list[str], scale) -> int:
    """Training validates at epoch ends: the whole number of epochs closest to ``scale.val_every_steps`` steps."""
    from b2s_core.occfile import OccDataset

    frames = 0
    for path in files:
        data = OccDataset(path)
        frames += len(data)
        data.close()
    steps_per_epoch = max(frames // scale.batch_size, 1)
    return max(round(scale.val_every_steps / steps_per_epoch), 1)


def _curve(run_dir: Path) -> list[dict]:
    """The run's validation records (step, IoU / mIoU / binary IoU): its learning curve."""
    from b2s_core.viz.curves import read_run

    keys = ("step", "epoch", "miou", "geometry_iou", "binary_iou")
    return [{k: r[k] for k in keys if k in r} for r in read_run(run_dir).records["val"]]


def _score_labels(labels: Path, truth: Path) -> dict:
    from b2s_core.apps.evaluate import EvaluateConfig, evaluate_files

    result = evaluate_files(truth, labels, EvaluateConfig(rayiou=False))
    return {"miou": result.miou, "geometry_iou": result.geometry_iou}


def _worker(cell, world, scale, work: Path) -> tuple[str, dict | None, str | None]:
    try:
        return cell.id, run_cell(cell, world, scale, work), None
    except Exception as err:  # reported by the parent; the other cells go on
        return cell.id, None, f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=6)}"


# -- many cells -------------------------------------------------------------------------------------------
def run_cells(cells, world, scale, work: Path, *, jobs: int = 1, log: Log = print, deadline: float | None = None,
              on_result: Callable[[], None] | None = None) -> tuple[dict[str, str], int]:
    """Run every unfinished cell, ``jobs`` at a time, dependencies first.

    Returns ({cell id: error} for the cells that did not finish, number of cells that finished now).

    Aliased cells reuse their twin's result. A cell whose dependency failed is not run. With a
    ``deadline`` (time.time()), no new cell starts after it (finished cells stay cached).
    ``on_result`` is called after each cell that finished (the claims' verdicts as they come).
    """
    backfill(cells, world, work, log)
    done = {c.id for c in cells if result_path(work, c.id).is_file()}
    failed: dict[str, str] = {}
    todo = [c for c in cells if c.id not in done and c.alias_of is None]
    total, finished, succeeded = len(todo), 0, 0
    log(f"cells: {len(cells)} in all, {len(done)} cached, {total} to run, {jobs} at a time")
    started = time.perf_counter()
    running: dict = {}

    def ready(cell) -> bool:
        return all(d in done for d in cell.deps)

    # Each cell in a fresh spawned process: memory is returned after every cell, and a long run picks
    # up the library as it is when the cell starts (not a copy forked from the parent's start).
    executor = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                                   max_tasks_per_child=1) if jobs > 1 else None
    try:
        while todo or running:
            blocked = [c for c in todo if any(d in failed for d in c.deps)]
            for c in blocked:
                failed[c.id] = f"dependency failed: {', '.join(d for d in c.deps if d in failed)}"
                todo.remove(c)
                log(f"  skip {c.id}: {failed[c.id]}")
            if deadline is not None and time.time() > deadline and todo:
                log(f"cells: deadline reached; {len(todo)} cell(s) not started (run again to continue)")
                for c in todo:
                    failed[c.id] = "not started (deadline)"
                todo = []
            startable = [c for c in todo if ready(c)]
            outcomes = []
            if executor is None:
                if startable:
                    cell = startable[0]
                    todo.remove(cell)
                    log(f"  start {cell.id}: {cell.describe}")
                    outcomes.append(_worker(cell, world, scale, work))
            else:
                while startable and len(running) < jobs:
                    cell = startable.pop(0)
                    todo.remove(cell)
                    log(f"  start {cell.id}: {cell.describe}")
                    running[cell.id] = executor.submit(_worker, cell, world, scale, work)
                if running:
                    finished_futures, _ = wait(list(running.values()), return_when=FIRST_COMPLETED)
                    for fut in finished_futures:
                        cell_id = next(k for k, v in running.items() if v is fut)
                        running.pop(cell_id)
                        outcomes.append(fut.result())
            if not outcomes and not running:
                for c in todo:  # nothing can start: its dependencies will never finish
                    failed[c.id] = "dependencies not available"
                todo = []
            for cell_id, result, error in outcomes:
                finished += 1
                elapsed = time.perf_counter() - started
                eta = elapsed / finished * (total - finished)
                if error is None:
                    done.add(cell_id)
                    succeeded += 1
                    log(f"  [{finished}/{total}] done {cell_id} in {result['seconds']:.0f} s{_summary(result)}"
                        f" (elapsed {elapsed / 60:.1f} min, ~{eta / 60:.1f} min left)")
                    if on_result is not None:
                        on_result()
                else:
                    failed[cell_id] = error
                    log(f"  [{finished}/{total}] FAILED {cell_id}: {error.splitlines()[0]}")
                    log("    " + "\n    ".join(error.splitlines()[1:]))
    finally:
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
    return failed, succeeded


def _summary(result: dict) -> str:
    if "val" in result:
        v = result["val"]
        text = f": mIoU {v['miou']:.2f}, IoU {v['geometry_iou']:.2f}"
        if "val_gt_binary" in result:
            text += f", with GT binary mIoU {result['val_gt_binary']['miou']:.2f}"
        return text
    if "vs_truth" in result:
        return f": labels vs truth mIoU {result['vs_truth']['miou']:.2f}"
    return ""
