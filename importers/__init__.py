"""Importers: public datasets' own files converted into the plain log format (`xdm import ...`).

One module per dataset (`mind`, `kuairand`) reads that dataset's files as they are published and writes a
log directory through the format's own writers (xdm/log_format.py); `output` puts the events in time
order within a bounded memory, `source_files` reads the datasets' rows with their line numbers and
`user_sample` draws `--max-users`. The package stands just above the ground: it imports only xdm/ (the log
format, the plain records), nothing from stream, learner, serving or replay, so a conversion needs no
broker and no torch. A package of its own rather than a part of replay/: nothing in it replays anything,
and the CLI is its only caller.
"""
