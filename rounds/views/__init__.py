"""Server-rendered portal pages for models, versions, rounds and the dashboard, one module each.
Read with ``viewer_required``, act with ``operator_required`` (``flportal.roles``)."""
