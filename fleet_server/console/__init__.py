"""The web console: server-rendered pages for ops staff at ``/console``.

Jinja2 templates, htmx for the parts that refresh themselves, uPlot for time series; the
JavaScript and CSS are vendored in ``static/vendor`` (pinned, licences beside them,
``make vendor`` refreshes them), so the console works offline with no build step. Pages
call the same service functions as the API; people sign in as console users
(:mod:`fleet_server.services.users`), not with API tokens.
"""
