"""Schemas of every JSON document vitedge reads back (pydantic, strict, JSON mode).

`base` (the frozen document class and shared field types), `card` (card.json), `bundle`
(bundle.json, passport.json), `results` (quant_report.json, a run's summary and lines, eval.json).

Each model lists the fields some part of vitedge reads, with their real types and ranges; other
keys are kept as they are (`extra="allow"`), so a document only has to be right where it is used.
`vitedge.documents.read_document` validates with these after checking the seal, so a malformed
field becomes one line naming the file and the field.

Imported lazily (pydantic costs ~0.1 s): never at `vitedge --help` time.
"""
