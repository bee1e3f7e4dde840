//! Test kit of the fleet crate: real etcd, and a recording stand-in for a node's own balancers.

#![allow(dead_code)]

pub mod etcd;
#[path = "../../../handover/tests/common/harness.rs"]
pub mod harness;
pub mod local;
