"""The replica's services: the orchestration behind each route and RPC, free of Ray, FastAPI
and gRPC, so that each is unit-tested with plain objects (tests/unit/serve/services/).

`replica.build_services` composes them for one Serve replica; the HTTP routers (`serve.http`)
and the gRPC handlers (`serve.rpc`) only parse, call them and map errors.
"""
