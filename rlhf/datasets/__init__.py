"""Preference exports' Django side: create and build them (:mod:`~rlhf.datasets.services`), list them, their
pages and API. The rows, formats and dataset card are the Django-free :mod:`rlhf.exports`."""
