//! `POST /v1/cluster/certificates/rotate`: new node certificates from the same cluster CA,
//! taken into use by every node without a restart.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use flotilla_model::rest::ClusterInfo;
use flotilla_model::{CertificateRotation, ClusterState, Command, CommandResult};

use crate::propose::{propose, Change};
use crate::{ApiContext, ApiError};

/// How long the rotation waits for every node to have its new certificate.
const ROTATION_WAIT: Duration = Duration::from_secs(30);

/// Orders the rotation, then answers once every node has a certificate issued after it.
pub(crate) async fn rotate(
    State(context): State<ApiContext>,
) -> Result<Json<ClusterInfo>, ApiError> {
    let state = context.store.state();
    let Some(ca) = state.cluster_ca() else {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            error_code: "no_cluster_ca",
            description: format!(
                "the cluster has no CA: it gets one once its cluster version is 0.2.0 (it is {}; `flotilla upgrade finalize`)",
                state.cluster_version()
            ),
        });
    };
    let target = ca.rotation + 1;
    let change = Change {
        command: Command::RotateNodeCertificates(CertificateRotation {}),
        applied: move |state: &ClusterState| {
            let rotation = state.cluster_ca().map_or(0, |ca| ca.rotation);
            (rotation >= target).then_some(CommandResult::Ok)
        },
        check: "flotilla status".into(),
    };
    propose(&context, change).await?;
    let renewed = |state: &ClusterState| {
        state
            .nodes
            .values()
            .all(|n| n.certificate.as_ref().is_some_and(|c| c.rotation >= target))
    };
    if !context.store.wait_until(ROTATION_WAIT, renewed).await {
        let state = context.store.state();
        let behind: Vec<String> = state
            .nodes
            .values()
            .filter(|n| n.certificate.as_ref().is_none_or(|c| c.rotation < target))
            .map(|n| format!("node:{} ({})", n.uid, n.addr))
            .collect();
        return Err(ApiError {
            status: StatusCode::GATEWAY_TIMEOUT,
            error_code: "rotation_pending",
            description: format!(
                "the rotation is ordered, but {} did not get a new certificate within {ROTATION_WAIT:?}: check that their daemons run; they renew once they do",
                behind.join(", ")
            ),
        });
    }
    crate::handlers::get_cluster(State(context)).await
}
