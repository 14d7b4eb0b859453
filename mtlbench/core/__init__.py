"""The contracts every extension implements: the registry, tasks and metrics, the data
layer, architectures (``MTLModel``), balancers (``Balancer`` + ``BalancerContext``) and
procedures (``Procedure`` + ``RunContext``)."""
