"""The `llmgateway` command line (also `python -m llmgateway`)."""

from __future__ import annotations

import click

from llmgateway import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="llmgateway")
def main() -> None:
    """llmgateway: one reliable endpoint in front of many unstable LLM provider keys.

    The config file is --config, else $LLMGATEWAY_CONFIG, else config/providers.yaml.
    """
