"""Build archives (`kfn_runtime.archive`): a function's requirements installed once by a build, kept
here for its instances to fetch (see store.py). Nothing here knows HTTP or tokens: the gateway's
`kfn_gateway.archives_api` serves a store."""
