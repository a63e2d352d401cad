"""Runs a TLS test target once per TLS backend."""

load("@rules_cc//cc:defs.bzl", "cc_test")

def cc_test_each_backend(name, **kwargs):
    """`name` runs with GnuTLS (the default backend), `name`_openssl with
    OpenSSL: tests/tls_util.h's TestBackend() reads KTM_TEST_TLS_BACKEND."""
    cc_test(name = name, **kwargs)
    env = dict(kwargs.pop("env", {}))
    env["KTM_TEST_TLS_BACKEND"] = "openssl"
    cc_test(name = name + "_openssl", env = env, **kwargs)
