"""The test bed: real components (Git servers, a kube-apiserver with etcd) run on loopback.

reverserd's behaviour is defined against real protocols, so the tests drive real servers
started as child processes, never mocks or in-process fakes.
"""
