"""A garbled-circuit cost model of ReLUs (DELPHI-style private inference).

In DELPHI-style protocols the linear layers run on secret shares with preprocessing done
offline, and every ReLU is a garbled circuit: garbled offline by the server, stored by the
client, evaluated online. Per ReLU, on one server core, the constants below are those
reported for DELPHI's ReLU circuits by Garimella et al., "Characterizing and Optimizing
End-to-End Systems for Private Inference" (ASPLOS 2023), after Mishra et al., "Delphi: A
Cryptographic Inference Service for Neural Networks" (USENIX Security 2020):

* 18,248 bytes of garbled-circuit storage on the client;
* ≈104 µs to garble (offline) and ≈54 µs to evaluate (online).

So the figures are linear in the ReLU count: a model's cost follows from accounting alone.
"""

from __future__ import annotations

GC_BYTES_PER_RELU = 18_248
GARBLE_SECONDS_PER_RELU = 104e-6
EVAL_SECONDS_PER_RELU = 54e-6


def gc_cost(relus: int) -> dict:
    return {"relus": relus, "storage_bytes": relus * GC_BYTES_PER_RELU,
            "offline_garble_seconds": relus * GARBLE_SECONDS_PER_RELU,
            "online_eval_seconds": relus * EVAL_SECONDS_PER_RELU}
