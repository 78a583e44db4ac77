"""Console views, one module per area; `dashboard.pages` maps them to URLs."""
