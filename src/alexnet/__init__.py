"""alexnet: train, evaluate, explain and serve AlexNet image classifiers.

    import alexnet
    run = alexnet.train(data="path/to/train_folder", epochs=3)
    print(alexnet.evaluate(run / "best.pt", split="val")["accuracy"])
"""

__version__ = "0.1.0"
__all__ = ["train", "evaluate", "predict", "explain", "report", "load_model"]


def __getattr__(name: str):
    # Lazy, so `import alexnet` (and the CLI's --help) does not pay for torch until it is used.
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'alexnet' has no attribute {name!r}")
