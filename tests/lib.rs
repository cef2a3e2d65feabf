//! Integration tests, one binary. Modules that need a cluster use `common::testbed()`.

mod common;
mod kube_apply;
mod kube_patch;
mod kube_shared;
mod kube_wait;
mod testbed_smoke;
