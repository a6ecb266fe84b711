"""Projects, their members and roles, and the one access API (:mod:`projects.access`)."""
