"""DVC stage `train_lm`: the cloud's language model. See edgeasr.stages.train_lm."""

import hydra
from omegaconf import DictConfig

from edgeasr.config import sweep_job_dir
from edgeasr.stages.train_lm import run


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    run(cfg, job_dir=sweep_job_dir())


if __name__ == "__main__":
    main()
