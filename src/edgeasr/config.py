"""Composing ``conf/`` into ``params.yaml``.

DVC's Hydra integration composes ``conf/`` into ``params.yaml`` on ``dvc exp run``; plain
``dvc repro`` reads the committed file. ``edgeasr-params`` writes it the same way (through DVC's own
``compose_and_dump``) so the committed file can never drift from what ``dvc exp run`` would write.
"""

from __future__ import annotations

import argparse
from pathlib import Path

CONFIG_NAME = "config"


def conf_dir(root: str | Path = ".") -> Path:
    return (Path(root) / "conf").resolve()


def compose_params(overrides: list[str] | None = None, root: str | Path = ".") -> str:
    """Return the YAML text DVC would write to ``params.yaml`` for these overrides."""
    import tempfile

    from dvc.utils.hydra import compose_and_dump

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "params.yaml"
        compose_and_dump(out, str(conf_dir(root)), None, CONFIG_NAME, str(Path(tmp)), list(overrides or []))
        return out.read_text(encoding="utf-8")


def sweep_job_dir() -> Path | None:
    """The output folder of this Hydra multirun job, or None outside a multirun (DVC runs, tests)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except (ImportError, ValueError):
        return None
    return Path(hc.runtime.output_dir) if hc.mode == RunMode.MULTIRUN else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Compose conf/ into params.yaml (what `dvc exp run` does).")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=tiny")
    parser.add_argument("--output", default="params.yaml")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs instead of writing it")
    args = parser.parse_args(argv)
    text = compose_params(args.overrides)
    out = Path(args.output)
    if args.check:
        current = out.read_text(encoding="utf-8") if out.exists() else ""
        if current != text:
            raise SystemExit(f"{out} differs from what conf/ composes; run `edgeasr-params` to rewrite it")
        return
    out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
