//! The control plane's side of node registration: applying a
//! [`Command::Join`](super::Command::Join) or `Leave` to the registry,
//! publishing the new snapshot and pointing the prober at the changed
//! targets. Runs on the control-plane thread, between its other events, so
//! a join is ordered with reloads, admin actions and health flips. The key
//! check and the parsing of the request happen before, in `admin/join.rs`.

use super::ControlPlane;
use crate::config::Backend;
use crate::control::{JoinError, JoinOutcome};
use crate::health::Prober;

impl ControlPlane {
    /// Adds a joined node and publishes. The prober starts probing it at
    /// once; until its check passes (rise) it takes no traffic. A node that
    /// cannot be published is taken out again, so a refused join changes
    /// nothing.
    pub(super) fn join(
        &mut self,
        prober: &mut Prober,
        service: &str,
        backend: Backend,
    ) -> Result<JoinOutcome, JoinError> {
        let (name, address, weight) = (backend.name.clone(), backend.address, backend.weight);
        let outcome = self.registry.join(service, backend)?;
        if outcome == JoinOutcome::AlreadyJoined {
            tracing::debug!(service = %service, backend = %name, address = %address, "node joined again: nothing to change");
            return Ok(outcome);
        }
        if let Err(e) = self.publish() {
            let _ = self.registry.leave(service, &name);
            tracing::error!(service = %service, backend = %name, error = %e, "join refused: the backend table cannot be built");
            return Err(e.into());
        }
        prober.set_targets(self.registry.probe_targets());
        tracing::info!(service = %service, backend = %name, address = %address, weight = weight.get(), "node joined; it takes traffic once its health check passes");
        Ok(outcome)
    }

    /// Removes a joined node and publishes: no new connections go to it;
    /// established ones are not touched. Removing a backend cannot make a
    /// table unbuildable (the configured backends remain, fewer than the
    /// table size); should publishing fail anyway, the error is answered and
    /// the next publication carries the removal.
    pub(super) fn leave(
        &mut self,
        prober: &mut Prober,
        service: &str,
        backend: &str,
    ) -> Result<Backend, JoinError> {
        let left = self.registry.leave(service, backend)?;
        prober.set_targets(self.registry.probe_targets());
        self.publish()?;
        tracing::info!(service = %service, backend = %backend, address = %left.address, "node left");
        Ok(left)
    }
}
