"""The operator console: `/admin/` in a browser, a live view of the whole gateway.

`setup` wires it into the app; `session` and `guard` are who may use it (a signed,
expiring cookie kept on the server, CSRF checks); `pages` serves the HTML and assets of
`static/` under a strict CSP; `views` answers the page's refreshes; `history` samples the
metrics' counters into 15 minutes of points; `tail` keeps the last access-log lines;
`share` adds the other workers' figures under --workers; `parts` holds them together.
"""
