"""DVC stage `reference`: Whisper tiny.en (faster-whisper) on the prepared test audio, scored our way and Whisper's way. See edgeasr.stages.reference."""

import hydra
from omegaconf import DictConfig

from edgeasr.config import sweep_job_dir
from edgeasr.stages.reference import run


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    run(cfg, job_dir=sweep_job_dir())  # a multirun job writes into its own folder, never into data/


if __name__ == "__main__":
    main()
