"""DVC stage `mwer`: minimum-WER fine-tuning of the compressed student on N-best lists. See edgeasr.stages.mwer."""

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    from edgeasr.stages.mwer import run

    run(cfg)


if __name__ == "__main__":
    main()
