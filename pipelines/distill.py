"""DVC stage `distill`: streaming student distilled from the teacher on labeled + unlabeled audio. See edgeasr.stages.distill."""

import hydra
from omegaconf import DictConfig

from edgeasr.stages.distill import run


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
