Every interception now records what it cost (`cost_micros`, integer micro-units of the currency), priced from a
shipped table of OpenAI and Anthropic list prices that `[prices."<provider>/<model>"]` tables extend or override;
dated model snapshots find their model's price, and a model with no price is recorded without a cost and counted in
`bridgeproxy_unpriced_requests_total`. `bridgeproxy usage` and `/api/v1/usage` report cost and can group by day and
by several dimensions at once (`--by initiator,day`). See `docs/spend.md`.
