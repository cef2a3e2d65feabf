//! Integration tests, one binary. Modules that need a cluster use `common::testbed()`.

mod common;
