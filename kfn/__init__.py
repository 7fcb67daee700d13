"""kfn's core: what the operator, the gateway, the autoscaler and local mode share.

The Function model (`kfn.functions`), the names they agree on (`kfn.naming`), the seam to what runs
instances (`kfn.instances`), the scaling decision (`kfn.scaling`) and the `kfn` command line (`kfn.cli`).
"""

__version__ = "0.1.0"
