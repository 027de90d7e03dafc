"""Workflows: `Signature`, `chain`, `group`, `chord`, `chunks`, `xmap`, `xstarmap`.

A signature is a dict (`task`, `args`, `kwargs`, `options`, `subtask_type`, `immutable`),
so `dict(sig)` is its wire form and `signature(dict)` rebuilds it, nested canvases included
(spec §1.4). Sending follows Celery (spec §1.8-1.10): a chain sends its first task with
the remaining steps reversed in `embed.chain`; a group publishes every member with
`group`/`group_index` headers (in one round trip); a chord writes its size to the result
backend before publishing its header, whose members carry the body in `embed.chord`, and
the worker that finishes the last part starts the body. Nobody polls.

One module per primitive: `signature`, `chain`, `group`, `chord`, `maps` (map, starmap,
chunks). The worker's side (next chain step, chord join, failure propagation) lives in
`celeriac.worker.workflow`.
"""

from __future__ import annotations

from celeriac.canvas.chain import _chain, chain
from celeriac.canvas.chord import _chord, chord
from celeriac.canvas.group import group
from celeriac.canvas.maps import chunks, xmap, xstarmap
from celeriac.canvas.signature import Signature, maybe_signature, signature, subtask

__all__ = [
    "Signature",
    "_chain",
    "_chord",
    "chain",
    "chord",
    "chunks",
    "group",
    "maybe_signature",
    "signature",
    "subtask",
    "xmap",
    "xstarmap",
]
