"""Reward-model and fine-tune runs, one module per subject:

- :mod:`~rlhf.runs.paths`: where runs work and what they read; :mod:`~rlhf.runs.hyperparams`: parsing
  hyper-parameters and building the training code's configs; :mod:`~rlhf.runs.data`: checks of the data
  a run trains on;
- :mod:`~rlhf.runs.lifecycle`: cancel, retry, claim, progress and heartbeat, failure;
- :mod:`~rlhf.runs.reward` and :mod:`~rlhf.runs.finetune`: create, run (the task bodies) and register;
  :mod:`~rlhf.runs.grids`: a fine-tune's evaluation grids;
- :mod:`~rlhf.runs.scoring`: reward-model scores of images, and the annotation workflow's plug-in;
- :mod:`~rlhf.runs.selectors`, :mod:`~rlhf.runs.forms`, :mod:`~rlhf.runs.views`, :mod:`~rlhf.runs.api`.

The training itself is the Django-free :mod:`rlhf.training`.
"""
