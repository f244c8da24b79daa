"""Deployment to real on-device runtimes: sherpa-onnx bundles decoded in a subprocess and checked
against our own PyTorch decode (:mod:`edgeasr.deploy.sherpa`); the bundles themselves are written
by :mod:`edgeasr.export.sherpa`."""
