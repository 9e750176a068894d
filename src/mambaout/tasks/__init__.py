"""The tasks: classification, segmentation, detection, video. Each has one package (recipe, data,
task = the engine's seam, metrics, predict); the CLI's command group of each is below."""

COMMANDS = {"classification": "mambaout", "segmentation": "mambaout segment", "detection": "mambaout detect",
            "video": "mambaout video"}


def task_command(task: str) -> str:
    """The command (group) that takes `task`'s checkpoints, for messages."""
    return COMMANDS.get(task, f"the {task} commands")
