//! `GET /v1/fleet`: the fleet as etcd holds it (what `handover fleet` prints); 404 when this node
//! is not in a fleet, 503 when etcd cannot be reached.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use handover_core::api::ErrorBody;
use handover_core::api::fleet::FleetView;

use super::{ApiError, ApiState};

/// Every node with its lease, VMs and acknowledgements; every notice.
#[utoipa::path(
    get,
    path = "/v1/fleet",
    tag = "fleet",
    responses(
        (status = 200, description = "The fleet as etcd holds it (what `handover fleet` prints)", body = FleetView),
        (status = 404, description = "This node is not in a fleet", body = ErrorBody),
        (status = 503, description = "The fleet's etcd cannot be reached", body = ErrorBody),
    )
)]
pub async fn fleet(State(state): State<Arc<ApiState>>) -> Result<Json<FleetView>, ApiError> {
    let Some(fleet) = state.coordinator.fleet() else {
        return Err(ApiError::not_found(
            "this node is not in a fleet (no [fleet] section in its configuration)",
        ));
    };
    match fleet.view().await {
        Ok(view) => Ok(Json(view)),
        Err(e) => Err(ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            body: ErrorBody {
                error: format!("the fleet's etcd cannot be reached: {e}"),
                field: None,
                balancers: Vec::new(),
            },
        }),
    }
}
