"""DVC stage `compress`: QAT + gradual magnitude pruning of the distilled student. See edgeasr.stages.compress."""

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    from edgeasr.stages.compress import run

    run(cfg)


if __name__ == "__main__":
    main()
