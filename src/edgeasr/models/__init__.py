"""Pure-PyTorch transducer models (encoders, predictors, joiner, loss) for edgeasr."""

from .encoders import ConformerEncoder, LstmEncoder, LstmState
from .joiner import Joiner
from .predictor import LstmPredictor, StatelessPredictor
from .subsampling import Conv2dSubsampling, InputNorm
from .transducer import Transducer, build_transducer, count_parameters, pad_labels

__all__ = [
    "Conv2dSubsampling",
    "ConformerEncoder",
    "InputNorm",
    "Joiner",
    "LstmEncoder",
    "LstmPredictor",
    "LstmState",
    "StatelessPredictor",
    "Transducer",
    "build_transducer",
    "count_parameters",
    "pad_labels",
]
