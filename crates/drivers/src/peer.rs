//! A remote handover node as a balancer: the migration module on this node tells the peer's
//! load-balancing module what to apply (`PUT /v1/balancer/vms/{vm}`), and asks it how much
//! traffic remains. The peer applies to its own balancers only, so peers never loop.

use std::time::Duration;

use handover_core::api::{Applied, BalancerStatus, DrainStatus, VmPhase};
use handover_core::balancer::{Balancer, BalancerError, BoxFuture};
use handover_core::config::PeerConfig;
use handover_core::model::VmId;
use handover_core::phase::{PhaseCommand, Readdress};

use crate::client::{ClientError, ControlClient};

/// Another handover node.
#[derive(Debug, Clone)]
pub struct PeerBalancer {
    name: String,
    client: ControlClient,
}

impl PeerBalancer {
    /// A peer from its configuration.
    pub fn new(config: &PeerConfig) -> Self {
        Self {
            name: config.name.clone(),
            client: ControlClient::new(&config.url, config.token.clone(), config.timeout),
        }
    }

    /// The peer's per-call timeout.
    pub fn timeout(config: &PeerConfig) -> Duration {
        config.timeout
    }
}

fn to_balancer_error(error: ClientError) -> BalancerError {
    match error {
        ClientError::Unreachable { reason, .. } => BalancerError::Unreachable(reason),
        ClientError::Timeout { timeout, .. } => BalancerError::Timeout(timeout.as_millis() as u64),
        ClientError::Status { status, body } => BalancerError::Rejected(format!("{status}: {}", body.error)),
        ClientError::Protocol { reason, .. } => BalancerError::Protocol(reason),
    }
}

impl Balancer for PeerBalancer {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "peer"
    }

    fn apply<'a>(
        &'a self,
        vm: &'a VmId,
        command: PhaseCommand,
    ) -> BoxFuture<'a, Result<Applied, BalancerError>> {
        Box::pin(async move {
            self.client
                .put(&format!("/v1/balancer/vms/{vm}"), &command)
                .await
                .map_err(to_balancer_error)
        })
    }

    fn set_backend<'a>(
        &'a self,
        change: &'a handover_core::api::BackendChange,
    ) -> BoxFuture<'a, Result<(), BalancerError>> {
        Box::pin(async move {
            self.client
                .put::<_, serde_json::Value>("/v1/balancer/backends", change)
                .await
                .map(|_| ())
                .map_err(to_balancer_error)
        })
    }

    fn apply_changed_at<'a>(
        &'a self,
        vm: &'a VmId,
        command: PhaseCommand,
        changed_at: handover_core::time::Millis,
    ) -> BoxFuture<'a, Result<Applied, BalancerError>> {
        Box::pin(async move {
            self.client
                .put(
                    &format!("/v1/balancer/vms/{vm}?changed_at={changed_at}"),
                    &command,
                )
                .await
                .map_err(to_balancer_error)
        })
    }

    fn set_addresses<'a>(
        &'a self,
        vm: &'a VmId,
        change: &'a Readdress,
    ) -> BoxFuture<'a, Result<Applied, BalancerError>> {
        Box::pin(async move {
            self.client
                .put(&format!("/v1/balancer/vms/{vm}/addresses"), change)
                .await
                .map_err(to_balancer_error)
        })
    }

    fn drain_status<'a>(&'a self, vm: &'a VmId) -> BoxFuture<'a, Result<DrainStatus, BalancerError>> {
        Box::pin(async move {
            self.client
                .get(&format!("/v1/balancer/vms/{vm}/drain"))
                .await
                .map_err(to_balancer_error)
        })
    }

    fn status(&self) -> BoxFuture<'_, Result<BalancerStatus, BalancerError>> {
        Box::pin(async move {
            self.client
                .get("/v1/balancer/status")
                .await
                .map_err(to_balancer_error)
        })
    }

    fn phases(&self) -> BoxFuture<'_, Result<Option<Vec<VmPhase>>, BalancerError>> {
        Box::pin(async move {
            self.client
                .get("/v1/balancer/phases")
                .await
                .map(Some)
                .map_err(to_balancer_error)
        })
    }
}
