"""`alexnet tune`: hyperparameter search with Optuna, each trial an ordinary run folder (docs/tuning.md).

space.py    the search space: a TOML/YAML file of `alexnet train` options, or the default one per recipe
storage.py  where the study lives (a journal file in DIR, or a database) and how a dead worker's trial is retried
pruning.py  the training callback that reports each epoch to the trial and stops a pruned run
ranks.py    under torchrun: rank 0 runs the study and sends each trial to the other ranks
study.py    the loop: create or join the study, run trials until it has enough, write the summary
summary.py  trials.csv/json, best.toml, the plots and summary.html

Nothing here is imported by `import alexnet`: the CLI imports `alexnet.tune.study` for `alexnet tune` alone.
"""
