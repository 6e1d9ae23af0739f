"""`vitedge report`: one self-contained HTML file (plots embedded), plus Markdown and JSON.

`write` (the entry: `write_report`), `runs`, `evals` and `pruned` (the sections of each kind of
folder), `fleet` (many runs or a run of several sources, stream by stream, worst first), `page` (HTML/Markdown rendering with every user string escaped, plots, reading helpers).

Reads a RUN_DIR (`vitedge run`: summary.json, frames.jsonl, events.jsonl, disagreements/), an
EVAL_DIR (`vitedge eval`: eval.json, logits.npz) or a `vitedge prune` artifact (card.json: what
was removed per block, MACs, agreement after pruning / distillation / merging, distillation
curve). Plots are drawn with matplotlib (Agg, no display) and embedded as PNG data URIs, so the
file can be mailed or attached to a ticket.
"""
