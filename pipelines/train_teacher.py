"""DVC stage `train_teacher`: Conformer RNN-T teacher. See edgeasr.stages.train_teacher."""

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    from edgeasr.stages.train_teacher import run

    run(cfg)


if __name__ == "__main__":
    main()
