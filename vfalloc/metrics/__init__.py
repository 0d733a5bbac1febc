"""vfalloc's Prometheus metrics: `exposition` (core: the text exposition rendered from the rows
`vfalloc list` uses), `counts` (the hook's refusals and errors, counted in the runtime directory)
and `textfile` (the inputs read from a Context, the textfile node_exporter collects, and its
refresh by a detached process).

This file imports nothing: a hook that fails imports only `counts`, and a hook that succeeds
none of them.
"""
