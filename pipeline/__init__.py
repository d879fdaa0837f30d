"""The serving path (seed "Data Diners"): fleet -> Zerobus -> bronze -> CDF copy -> silver ->
synced table or real-time writer -> Postgres -> WebSocket push, stamped at every hop.

    fleet.py      N drivers at a rate through a Zerobus writer into bronze (acks stamped)
    serving.py    the copy and the synced table: the local stack's services, or the
                  workspace's (bundle job, `w.database` / `w.postgres` synced tables)
    realtime.py   the ForeachWriter contract into an app-owned table with a NOTIFY trigger
    push.py       one LISTEN connection and the synced table's polling -> WebSocket clients
    freshness.py  per path and hop, mergeable HDR histograms from event time
    events.py     checks of events from outside (bad input is counted, never fatal)
    run.py        one run of all of it, and the service the API and the CLI share
"""
