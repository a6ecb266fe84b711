"""Signed webhooks: a project's admins register endpoints, and the project's events reach them.

- :mod:`~projects.webhooks.events`: the event catalogue and :func:`~projects.webhooks.events.emit`, which
  higher layers call inside the transaction that makes an event (an outbox row per subscribed endpoint,
  sent once that transaction commits);
- :mod:`~projects.webhooks.signing`: the Standard Webhooks signature (no Django);
- :mod:`~projects.webhooks.delivery`: sending, retries with backoff, the lease that a killed worker lets
  lapse, the sweeper, disabling an endpoint after repeated failures;
- :mod:`~projects.webhooks.services` and :mod:`~projects.webhooks.selectors`: what admins do and see;
- :mod:`~projects.webhooks.tasks`, ``api``, ``views``, ``urls``: the entry points.

The models (``WebhookEndpoint``, ``WebhookDelivery``, ``WebhookAttempt``) live in :mod:`projects.models`.
"""
