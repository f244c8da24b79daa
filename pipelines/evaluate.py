"""DVC stage `evaluate`: the exported student run by the integer runtime (WER) and the NPU emulator (latency, energy, roofline). See edgeasr.stages.evaluate."""

import hydra
from omegaconf import DictConfig

from edgeasr.stages.evaluate import run


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
