"""alexnet: train, evaluate, explain and serve AlexNet image classifiers.

    import alexnet
    run = alexnet.train(data="path/to/train_folder", epochs=3)
    print(alexnet.evaluate(run / "best.pt", split="val")["accuracy"])
"""

from .version import __version__  # noqa: F401 (re-exported: alexnet.__version__)

__all__ = ["train", "evaluate", "predict", "explain", "report", "load_model"]


def __getattr__(name: str):
    if name in __all__:
        # lazy: `import alexnet` (and the CLI's --help) does not pay for torch until the API is used
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'alexnet' has no attribute {name!r}")
