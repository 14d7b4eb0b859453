"""Command line: ``python -m mtlbench {run,report,list,bench,group}``."""
from mtlbench.cli.commands import USAGE, command_config, config_options, fail, main  # noqa: F401
