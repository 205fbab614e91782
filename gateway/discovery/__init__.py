"""Elastic pools: members found by DNS, and the wake hooks of cold pools.

    dns.py    one host's A/AAAA addresses (dnspython's asyncio resolver); LookupFailed
    run.py    the background loop: lookups every `discover.interval_s`, members in and
              out of the states and route table, draining, gateway_backend_members
    share.py  under --workers: the leader's addresses (members.json), followed by the rest
    wake.py   a backend's `wake` hook, once per cold period for the whole server

What a member is, and the pure bookkeeping of members, is `dispatch/members.py`; how a
request waits on a cold pool is `dispatch/cold.py`.
"""
