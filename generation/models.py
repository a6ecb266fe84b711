from __future__ import annotations

# Models arrive with the issues that need them; see the README architecture section.
