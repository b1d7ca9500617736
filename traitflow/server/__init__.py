"""`traitflow serve`: a warm model server on localhost, and the client that stages use.

A model that takes minutes to load should load once, not once per `dagster asset materialize`.
`traitflow serve --variants chat,pessimist` loads those variants and keeps them; every stage that
needs a model (the asset table's `gpu` rows) then runs inside the server's process, one at a time,
and its Dagster step only sends the request and relays the log lines and the result. Stages that
need no model run where they are.

Discovery: the server writes `<project root>/.traitflow/server.json` (its URL, PID, the variants it
holds and a random token, readable by the owner only) and removes it on exit. A client finds the
server there, so a server serves exactly one project root; every request but `/health` carries the
token. It binds 127.0.0.1 only.

Falling back: `ModelResource` (resources/model.py) uses the server when it answers and holds the
model variants the stage asks for at the same content version (`traitflow.model.fingerprint`: spec
and weights); otherwise, or when `TRAITFLOW_NO_SERVER=1`, the stage loads its models locally. A
server that stops mid-stage is the same as no server: the stage re-runs locally (writes are atomic,
so nothing it left looks complete). Results are identical either way: the same stage code runs on
the same weights.

Endpoints (JSON in, JSON or NDJSON out):
- `GET /health`: `{"ok", "pid", "root", "variants": {name: version}, "running", "queued", "max_queue"}`.
- `POST /stage`: run one stage (`traitflow.stages.run_*`) on one partition; streams `{"log"}` lines,
  then `{"output"}` or `{"error", "user", "not_served"}`.
- `POST /generate`: greedy generation of one chat prompt, optionally steered by traits' best vectors,
  each token projected on the experiment's monitored vectors (what `traitflow monitor` prints);
  streams `{"monitors"}`, one `{"token", "scores"}` per token, then `{"done"}`.
- `POST /capture`: pooled activations of token sequences at some layers, as safetensors.

One model task runs at a time; up to `--max-queue` wait their turn, and one more is answered
`503` with what is running and how many wait.
"""
