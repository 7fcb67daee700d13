"""Helpers shared by the tests (the tests themselves stay in their tier's folder; fixtures are
offered by each tier's conftest.py).

    waiting     wait_until / eventually: poll a condition, bounded in time and in polls
    functions   function_manifest / make_function: a Function for a test, fields overridden by keyword
    backend     FakeBackend: an InstanceBackend of fake (or placeholder) instances; fake functions
    gateway     running_gateway: a Gateway served on 127.0.0.1; RawInstance: a raw TCP instance
    invoke_api  Lambda's Invoke API called at a running gateway as boto3 calls it
    keys        the authentication tests' keys; events: FakeStore, an in-memory event store
    clocks      FakeClock; ports: free_port; modules: write_module (a handler module on disk)
    localmode   `kfn local` as a real process; the `kfn` command; recording functions
    nats        a JetStream nats-server on 127.0.0.1
    kube        an emulated Kubernetes API server (kmock); kubelet: pods run as local processes
    operator    `kfn operator` in-process, in a thread of its own
    builds      the operator's build Jobs: FakeStore (the archive store's HEAD), key_of, build_jobs, patch_status
    archives    build archives packed or crafted member by member; the gateway's archive store as tests call it
    schemas     supported_versions: the Kubernetes versions objects are validated against
"""
