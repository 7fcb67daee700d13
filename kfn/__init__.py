"""kfn's core: what the operator, the gateway, the autoscaler and local mode share.

The Function model (`kfn.core.functions`), the names they agree on (`kfn.core.naming`), the seam to what
runs instances (`kfn.core.instances`), the scaling decision (`kfn.core.scaling`) and the `kfn` command line
(`kfn.cli`).
"""

__version__ = "0.1.0"
