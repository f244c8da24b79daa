"""DVC stage `reference`: Whisper tiny.en (faster-whisper) on the prepared test audio, scored our way and Whisper's way. See edgeasr.stages.reference."""

import hydra
from omegaconf import DictConfig

from edgeasr.stages.reference import run


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
