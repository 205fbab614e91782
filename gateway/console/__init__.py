"""The operator console: `/admin/` in a browser, a view of the live gateway.

`session` (sign-in cookie, CSRF), `pages` (the HTML, assets and their headers),
`history` (15 minutes of rates sampled from the metrics), `tail` (the last access-log
lines), `share` (under --workers: what each worker adds to the whole server's view),
`views` (the console's JSON) and `setup` (the wiring `create_app` calls).
"""
