"""The closed loop (issue 10), one module per concern:

- :mod:`rlhf.loop.simulate`: simulated annotators that work a project's queue through the same
  services as the browser (next task, generate, rank, rationale, submit);
- :mod:`rlhf.loop.arena`: the blind arena (comparisons, votes, win rate with a Wilson interval and
  a Bradley-Terry leaderboard);
- :mod:`rlhf.loop.evaluate`: a model version against its parent on held-out prompts with fixed seeds;
- :mod:`rlhf.loop.rounds`: rounds chaining generation, annotation, export, reward model, fine-tune;
- :mod:`rlhf.loop.labels`: a round's label noise (the temperature calibrated to a target label accuracy on
  its own images) and what its rankings show (label accuracy, agreement);
- :mod:`rlhf.loop.stats`: the Django-free statistics the modules above share;
- :mod:`rlhf.loop.views` and :mod:`rlhf.loop.forms`: the pages (round timeline, arena, evaluation report).

The loop is the top layer: it uses the runs, the datasets, the workflow and generation; nothing below
imports it.

Preference functions themselves live in :mod:`rlhf.preferences` (Django-free).
"""
