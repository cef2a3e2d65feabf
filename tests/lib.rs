//! Integration tests, one binary. Modules that need a cluster use `common::testbed()`.

mod bad_plans;
mod cli_cancel;
mod common;
mod diff_status;
mod existing_teardown;
mod http_check;
mod kind_live;
mod kind_preflight;
mod kube_apply;
mod kube_client;
mod kube_patch;
mod kube_shared;
mod kube_wait;
mod ledger;
mod ownership;
mod pins;
mod proxy;
mod prune;
mod sim_plan;
mod standalone;
mod testbed_smoke;
