"""Helpers the tests and benchmarks share that are no part of the library: a whole deployment
on one machine (:mod:`tests.support.local_federation`) and a network namespace for it
(:mod:`tests.support.netns`)."""
