"""``leadstream sinks``: deliver each qualified lead to the sinks its site configures.

    qualified-leads ──▶ dispatch (filters, delivery state) ──▶ one bounded queue per sink ──▶ deliver
                                                                   │ full or failed            │ last attempt
                                                                   ▼                           ▼
                                                    Redis retry schedule (durable)     sink-dead-letter

Modules: :mod:`.rules` (pure: filters, backoff), :mod:`.base` (the Sink contract and
outcomes), :mod:`.webhook`, :mod:`.slack`, :mod:`.hubspot`, :mod:`.jsonl` (the sinks),
:mod:`.state` (delivery state and scheduled retries in Redis), :mod:`.runner` (the
process), :mod:`.redrive` (``retry-dead-letter``). Email nurture: :mod:`.email` (pure: who gets
a sequence, tokens, rendering, headers, DKIM, the hand-off text), :mod:`.sequences` (the
schedule in Redis), :mod:`.nurture` (the email sink, the reply desk), :mod:`.inbound` (the
inbound SMTP listener, the inbound-parse webhook, the unsubscribe pages), :mod:`.replies`
(the reply classifier).
"""
