"""Documents sent as letters: templates per language, PDFs, MIME messages, and the run
pipeline (create, plan, render, route, print batch, summary) with its kinds (dunning,
balance confirmations, payment advice). Imports ``core`` and the public names of ``outbound``.
"""
