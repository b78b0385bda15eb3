"""Run reports shared by `dualpath replay` and `dualpath simulate`.

series   time series, CDFs and storage-NIC rates from `RequestSample`s (pure)
plots    the PNGs (matplotlib's object API on Agg: no display, no global state)
html     the static `index.html` (summary tables and the plots; no script, no external URL)
render   `write_report(folder, samples, slo, …)`: all of the above into one folder
"""
