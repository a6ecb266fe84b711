"""The template builder: the component catalogue, presets, and templates' services, selectors, pages and API."""
