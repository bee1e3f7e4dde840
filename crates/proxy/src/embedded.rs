//! The embedded proxy as a [`Balancer`]: the migration module drives it exactly as it drives a
//! remote node or an HAProxy instance, only without a network hop.

use std::sync::Arc;

use handover_core::api::{Applied, BalancerStatus, DrainStatus};
use handover_core::balancer::{Balancer, BalancerError, BoxFuture};
use handover_core::model::VmId;
use handover_core::phase::{PhaseCommand, Readdress};

use crate::pools::Pools;

/// The in-process balancer.
#[derive(Debug, Clone)]
pub struct EmbeddedBalancer {
    name: String,
    pools: Arc<Pools>,
}

impl EmbeddedBalancer {
    /// Wraps the proxy's pools.
    pub fn new(name: impl Into<String>, pools: Arc<Pools>) -> Self {
        Self {
            name: name.into(),
            pools,
        }
    }

    /// The pools.
    pub fn pools(&self) -> &Arc<Pools> {
        &self.pools
    }
}

impl Balancer for EmbeddedBalancer {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn serves_known(&self, vm: &VmId) -> Option<bool> {
        Some(self.pools.serves(vm))
    }

    fn apply<'a>(
        &'a self,
        vm: &'a VmId,
        command: PhaseCommand,
    ) -> BoxFuture<'a, Result<Applied, BalancerError>> {
        Box::pin(async move { Ok(self.pools.apply(vm, command)) })
    }

    fn set_addresses<'a>(
        &'a self,
        vm: &'a VmId,
        change: &'a Readdress,
    ) -> BoxFuture<'a, Result<Applied, BalancerError>> {
        Box::pin(async move { Ok(self.pools.readdress(vm, change)) })
    }

    fn drain_status<'a>(&'a self, vm: &'a VmId) -> BoxFuture<'a, Result<DrainStatus, BalancerError>> {
        Box::pin(async move { Ok(self.pools.drain_status(vm)) })
    }

    fn status(&self) -> BoxFuture<'_, Result<BalancerStatus, BalancerError>> {
        Box::pin(async move { Ok(self.pools.status()) })
    }
}
