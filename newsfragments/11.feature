A dashboard for administrators at `/ui/`, served by the gateway itself and working offline (server-rendered HTML
and SVG, no script, its style sheet shipped in the package): an overview of requests, tokens and cost per hour or
day with the top users, models and clients, error and refusal rates and the streams in flight; the interceptions,
filtered by user, model, client, provider, status, time and prompt text, paged by key; each interception with its
delegation, credential hint, tokens, cost, time to first byte, prompt and tool calls; client sessions as timelines;
users and keys (create a key shown once, revoke it, disable a user). Administrators sign in with their bridge key;
the session is an HttpOnly, SameSite=Strict cookie kept in the store, and every form carries a CSRF token.
Migration 5 adds the rollups (kept by triggers), indexes and sign-in sessions that keep every page in tens of
milliseconds on a million interceptions, and records `ttfb_ms`. `/api/v1` gains `interceptions/{id}`, more filters
and cursor paging, `overview`, `sessions` and `users`, described by an OpenAPI document at `/api/v1/openapi.json`.
See `docs/ui.md`.
