"""Rich display of the scene-by-scene drivers (``convert``, ``build-binary``).

Scene names, tokens and problems come from the dataset: they are escaped, never read as rich markup.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from converters.jobs.progress import SceneProgress
from converters.jobs.scene_run import SkippedFrame


def scene_progress_bars(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=False)


class RichSceneProgress(SceneProgress):
    """Scenes overall, and the frames of the scene in progress (one worker)."""

    def __init__(self, progress: Progress, *, done: str, frames: str = "frames") -> None:
        self.progress = progress
        self.done, self.frames = done, frames  # e.g. 'converted', 'key frames'
        self.scenes_task = None
        self.frames_task = None

    def start(self, total_scenes: int, resumed: int) -> None:
        if resumed:
            self.progress.console.print(f"resuming: {resumed} of {total_scenes} scenes already {self.done}")
        self.scenes_task = self.progress.add_task("scenes", total=total_scenes, completed=resumed)

    def scene_started(self, scene: str) -> None:
        if self.frames_task is not None:
            self.progress.remove_task(self.frames_task)
        self.frames_task = self.progress.add_task(f"  {escape(scene)}", total=None)

    def frame_done(self, scene: str) -> None:
        self.progress.advance(self.frames_task)

    def scene_done(self, scene: str, frames: int, skipped: int) -> None:
        note = f", {skipped} skipped" if skipped else ""
        self.progress.console.print(f"{escape(scene)}: {frames} {self.frames}{note}")
        self.progress.advance(self.scenes_task)


def print_skipped(console: Console, skipped: list[SkippedFrame]) -> None:
    if not skipped:
        return
    table = Table(title=f"{len(skipped)} skipped frames")
    table.add_column("scene")
    table.add_column("frame token")
    table.add_column("problem", overflow="fold")
    for row in skipped:
        table.add_row(escape(str(row.scene)), escape(str(row.token)), escape(str(row.problem)))
    console.print(table)
