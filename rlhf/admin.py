from __future__ import annotations

# Admin registrations arrive with this app's models.
