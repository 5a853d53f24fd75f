"""Canvas: signatures and the workflows built from them (chain, group, chord, chunks, map).

This module is the public face of canvas; the code lives in :mod:`asyncq.signature` (one
call), :mod:`asyncq.constructs` (chain, group, chord) and :mod:`asyncq.workflow` (what a
worker does when a task of a workflow finishes).

A :class:`Signature` is a task call not sent yet: the task's name, args, kwargs and send
options. Signatures nest into :class:`Chain` (steps in order, each given the previous
result), :class:`Group` (members in parallel) and :class:`Chord` (a group, then a callback
given the list of its results). Awaiting any of them enqueues it and returns its final value;
``enqueue()`` returns a handle instead.

Workflows travel inside task messages as plain dicts (the formats are in docs/canvas.md): a
chain's remaining steps ride in ``message.chain``, callbacks in ``message.callbacks`` /
``message.errbacks``, and a chord header task carries ``message.chord``. Whichever worker
finishes a task calls :func:`on_task_finished`, which sends what comes next, so nothing
depends on the producer staying alive. Every task id of a workflow is assigned before the
first message leaves (``freeze``), so the producer holds the handle of the last step at once.

A chord joins through the result backend's atomic counter: each header task increments it
when it finishes, and the one that brings it to the header's size checks every header record
is final, claims the join with a second counter, and sends the callback. No task polls.
"""

from asyncq.constructs import Chain, Chord, Group, chain, chord, chunks_group, group, map_signature
from asyncq.signature import Signature, signature, signature_dicts
from asyncq.workflow import on_task_finished, register_builtins

__all__ = [
    "Chain",
    "Chord",
    "Group",
    "Signature",
    "chain",
    "chord",
    "chunks_group",
    "group",
    "map_signature",
    "on_task_finished",
    "register_builtins",
    "signature",
    "signature_dicts",
]
