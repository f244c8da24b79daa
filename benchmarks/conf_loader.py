"""Compose the project's Hydra config for benchmark scripts (same as the tests do)."""

from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir

CONF = Path(__file__).resolve().parents[1] / "conf"


def compose(overrides=None):
    with initialize_config_dir(str(CONF), version_base=None):
        return hydra_compose("config", overrides=list(overrides or []))
