"""DVC stage `prepare`: corpus -> lhotse manifests, features, tokenizer. See edgeasr.stages.prepare."""

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    from edgeasr.stages.prepare import run

    run(cfg)


if __name__ == "__main__":  # lhotse's feature workers use spawn: the guard is required
    main()
