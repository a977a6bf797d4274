"""RepYOLO's library. Shared leaves (boxes, NMS, checkpoints, device, paths, logging, errors) sit here;
the packages data/, train/, evaluation/ and deploy/ build on them."""

__version__ = "0.1.0"  # the one version source: pyproject.toml and every checkpoint read it from here
