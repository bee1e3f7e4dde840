//! Helpers shared by handover's fuzz targets (`fuzz_targets/`): the checks several targets make,
//! written independently of the code under test so that they can disagree with it.

pub mod config;
pub mod http;
